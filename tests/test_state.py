"""Tests for smagent.state: which state folder a config uses, and when it is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from smagent.config import Config, load_config
from smagent.state import SYSTEM_STATE_DIR, StateDirError, ensure_state_dir, state_dir_for

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another user")


def config(tmp_path: Path, state_dir: str | None = None) -> Config:
    raw: dict[str, object] = {"templates": []}
    if state_dir is not None:
        raw["state_dir"] = state_dir
    path = tmp_path / "smagent.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def test_the_configs_state_dir_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`state_dir` in the config (relative: to the config's folder) wins over systemd's."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "systemd"))
    assert tmp_path / "mine" == state_dir_for(config(tmp_path, "mine"))


def test_systemds_state_directory_comes_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without one, `$STATE_DIRECTORY` (its first folder when systemd lists several)."""
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path / 'one'}:{tmp_path / 'two'}")
    assert tmp_path / "one" == state_dir_for(config(tmp_path))


def test_root_uses_the_system_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root without either: /var/lib/smagent."""
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert SYSTEM_STATE_DIR == state_dir_for(config(tmp_path))


def test_a_user_uses_the_xdg_state_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another user without either: $XDG_STATE_HOME/smagent, else ~/.local/state/smagent."""
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert tmp_path / "xdg" / "smagent" == state_dir_for(config(tmp_path))
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tmp_path / "home" / ".local" / "state" / "smagent" == state_dir_for(config(tmp_path))


def test_the_folder_is_made_closed_to_others(tmp_path: Path) -> None:
    """A missing folder is made (with its parents), mode 0700 whatever the umask."""
    old = os.umask(0)
    try:
        made = ensure_state_dir(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert tmp_path / "a" / "b" == made
    assert 0o700 == made.stat().st_mode & 0o777


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_a_folder_others_may_write_to_is_refused(tmp_path: Path, mode: int) -> None:
    """Group- or world-writable: refused, naming the folder, its mode and the fix."""
    folder = tmp_path / "state"
    folder.mkdir()
    folder.chmod(mode)
    with pytest.raises(StateDirError) as raised:
        ensure_state_dir(folder)
    assert f"state_dir {folder}: others may write to it (mode {mode:04o}); chmod 700 it" == str(
        raised.value
    )


def test_something_else_than_a_folder_is_refused(tmp_path: Path) -> None:
    """A file where the folder should be: refused, with the reason."""
    (tmp_path / "state").write_text("")
    with pytest.raises(StateDirError, match=r"state_dir .*/state: "):
        ensure_state_dir(tmp_path / "state")


@as_root
def test_a_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    """Owned by another user: refused, naming both users."""
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    os.chown(folder, NOBODY, NOBODY)
    with pytest.raises(StateDirError, match=f"owned by uid {NOBODY}, not by this user"):
        ensure_state_dir(folder)


def test_a_symlink_of_ours_to_a_folder_of_ours_is_used(tmp_path: Path) -> None:
    """systemd's DynamicUser= makes /var/lib/NAME a symlink (owned by root) to
    /var/lib/private/NAME and sets $STATE_DIRECTORY to the symlink: that folder is used."""
    real = tmp_path / "private" / "smagent"
    real.mkdir(parents=True, mode=0o700)
    link = tmp_path / "smagent"
    link.symlink_to(real)
    assert link == ensure_state_dir(link)
    assert real.exists()


@as_root
def test_a_symlink_made_by_another_user_is_refused(tmp_path: Path) -> None:
    """A symlink another user made may point anywhere it likes: refused."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "state"
    link.symlink_to(real)
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(StateDirError, match=f"a symlink owned by uid {NOBODY}"):
        ensure_state_dir(link)


def test_a_symlink_to_a_folder_others_may_write_to_is_refused(tmp_path: Path) -> None:
    """Following a symlink does not skip the checks of the folder it leads to."""
    real = tmp_path / "real"
    real.mkdir()
    real.chmod(0o777)
    link = tmp_path / "state"
    link.symlink_to(real)
    with pytest.raises(StateDirError, match="others may write to it"):
        ensure_state_dir(link)

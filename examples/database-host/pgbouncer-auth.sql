-- pgbouncer's auth_query with Vault dynamic credentials (pgbouncer-vault.ini): run as a
-- superuser in each database pgbouncer serves, once the role pgbouncer_auth exists
-- (CREATE ROLE pgbouncer_auth LOGIN PASSWORD '<its verifier>'). It can read the verifiers of
-- Vault's roles (named v-...) and of nothing else.
CREATE SCHEMA IF NOT EXISTS pgbouncer;
REVOKE ALL ON SCHEMA pgbouncer FROM PUBLIC;
GRANT USAGE ON SCHEMA pgbouncer TO pgbouncer_auth;
CREATE OR REPLACE FUNCTION pgbouncer.get_auth(p_usename text)
RETURNS TABLE (usename name, passwd text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
    SELECT usename, passwd FROM pg_catalog.pg_shadow
    WHERE usename = p_usename AND usename LIKE 'v-%'
$$;
REVOKE ALL ON FUNCTION pgbouncer.get_auth(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgbouncer.get_auth(text) TO pgbouncer_auth;

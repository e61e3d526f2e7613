-- GET the URL wrk was given with a Bearer token (TOKEN): /api/v1/issues/{id}, /issues/mine, or
-- the reference app's row.
--   TOKEN=... wrk -c32 -d10s --latency -s get_auth.lua http://host:port/api/v1/issues/mine
dofile("report.lua")

local token = os.getenv("TOKEN") or ""
wrk.headers["Authorization"] = "Bearer " .. token

-- POST /api/v1/issues as a resident: a valid Bearer token (TOKEN), a real village (VILLAGE_ID)
-- and a unique Idempotency-Key per request (RUN_ID, the thread and a counter), so that every
-- request is a new report and none is answered from the idempotency store.
--   TOKEN=... VILLAGE_ID=... RUN_ID=r1 wrk -c32 -d10s --latency -s post_issue.lua http://host:port
dofile("report.lua")

local token = os.getenv("TOKEN") or ""
local village = os.getenv("VILLAGE_ID") or ""
local run_id = os.getenv("RUN_ID") or tostring(os.time())
local path = os.getenv("REQUEST_PATH") or "/api/v1/issues"
local body = string.format(
   '{"category": "road_traffic", "description": "村口道路有个大坑，晚上看不清容易摔倒。", ' ..
   '"village_id": "%s", "address": "沙口集村东头", "lat": 38.3081, "lon": 115.5391}', village)

-- setup() runs in wrk's main Lua state and numbers each thread; thread:set makes ``thread_no``
-- a global of that thread's own state, which request() reads.
local created = 0
thread_no = 0

function setup(thread)
   created = created + 1
   thread:set("thread_no", created)
end

local counter = 0

function request()
   counter = counter + 1
   return wrk.format("POST", path, {
      ["Authorization"] = "Bearer " .. token,
      ["Content-Type"] = "application/json",
      ["Idempotency-Key"] = string.format("bench-%s-%d-%d", run_id, thread_no, counter),
   }, body)
end

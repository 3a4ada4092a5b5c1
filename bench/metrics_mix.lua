-- wrk script: a varied request mix to probe /metrics cardinality. Stops after TOTAL
-- requests (env BENCH_METRICS_REQUESTS, default 100000; BENCH_THREADS threads share it).
-- Mix: distinct student URLs (reads), distinct file URLs, compat writes (valid + bad
-- timestamps), 404s on random paths, wrong methods, missing/unknown tokens.
local reader = "Bearer " .. (os.getenv("WATCHER_READER_TOKEN") or "")
local agent = "Bearer " .. (os.getenv("WATCHER_AGENT_TOKEN") or "")
local total = tonumber(os.getenv("BENCH_METRICS_REQUESTS") or "100000")
local threads = {}
local counter = 0
local done_count = 0
local tid = 0
local quota = total

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  quota = math.floor(total / tonumber(os.getenv("BENCH_THREADS") or "1"))
end

local function h(auth, ctype)
  local t = {}
  if auth then t["Authorization"] = auth end
  if ctype then t["Content-Type"] = "application/json" end
  return t
end

function request()
  counter = counter + 1
  local n = counter * 8 + tid
  local k = n % 20
  local sid = string.format("%09d", n)
  if k < 6 then
    return wrk.format("GET", "/api/os-1/hw1/" .. sid, h(reader))
  elseif k < 8 then
    return wrk.format("GET", "/api/os-1/hw" .. (n % 50) .. "/" .. sid .. "/main" .. n .. ".c", h(reader))
  elseif k < 9 then
    return wrk.format("GET", "/api/snapshot_avg/os-1/hw1/" .. sid .. "/f" .. n .. ".c", h(reader))
  elseif k < 11 then
    local ts = os.date("!%Y%m%d_%H%M%S", 1772323200 + n)
    return wrk.format("POST", "/api/os-1/hw1/" .. sid .. "/main.c/" .. ts, h(agent, true), '{"bytes": 10}')
  elseif k < 12 then
    return wrk.format("POST", "/api/os-1/hw1/" .. sid .. "/main.c/not-a-time-" .. n, h(agent, true), '{"bytes": 10}')
  elseif k < 15 then
    return wrk.format("GET", "/no/such/path/" .. n .. "?q=" .. n, h(nil))
  elseif k < 16 then
    return wrk.format("DELETE", "/api/os-1/hw1/" .. sid, h(reader))
  elseif k < 17 then
    return wrk.format("PATCH", "/health/" .. n, h(nil))
  elseif k < 18 then
    return wrk.format("GET", "/api/os-1/hw1/" .. sid, h(nil))
  elseif k < 19 then
    return wrk.format("GET", "/api/os-1/hw1/" .. sid, h("Bearer wrong-" .. n))
  else
    return wrk.format("GET", "/api/v1/events/" .. n, h(reader))
  end
end

function response(status, headers, body)
  done_count = done_count + 1
  if done_count == quota then
    -- wrk keeps its main timer running after thread:stop(); tell the harness, which
    -- sends SIGINT so wrk prints its summary now
    wrk.thread:stop()
    io.write("WRK_QUOTA_REACHED\n")
    io.stdout:flush()
  end
end

function done(summary, latency, requests)
  io.write(string.format('WRK_JSON {"requests": %d, "duration_us": %d, "errors_status": %d, ' ..
    '"errors_other": %d}\n', summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end

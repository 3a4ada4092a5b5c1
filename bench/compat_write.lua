-- wrk script: compat single-event snapshot writes, every request a distinct event.
--   POST /api/os-1/hw1/<student>/<filename>/<YYYYMMDD_HHMMSS>  {"bytes": N}
-- Student, file and timestamp vary with a per-thread counter, so no two requests are
-- duplicates. Token comes from the WATCHER_AGENT_TOKEN environment variable.
local token = os.getenv("WATCHER_AGENT_TOKEN") or ""
local files = { "main.c", "src@list.c", "hello.c", "util@io.h", "README.md" }
local threads = {}
local counter = 0
local tid = 0
local base = 1772323200 -- 2026-03-01T00:00:00Z

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  wrk.headers["Authorization"] = "Bearer " .. token
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local n = counter * 8 + tid -- distinct across threads
  local student = string.format("2026%05d", n % 200)
  local file = files[(n % #files) + 1]
  local ts = os.date("!%Y%m%d_%H%M%S", base + n)
  local path = "/api/os-1/hw1/" .. student .. "/" .. file .. "/" .. ts
  local body = string.format('{"bytes": %d}', 100 + (n % 5000))
  return wrk.format("POST", path, nil, body)
end

function done(summary, latency, requests)
  local out = string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "errors_connect": %d, "errors_read": %d, ' ..
    '"errors_write": %d, "errors_status": %d, "errors_timeout": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean)
  io.write(out .. "\n")
end

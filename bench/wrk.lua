-- wrk script: each request goes to the next of many tokens, as callbacks arrive in real life.
-- Arguments (after wrk's "--"): METHOD PREFIX TOKENS_FILE [BODY_FILE [CONTENT_TYPE]]
-- (CONTENT_TYPE: the body's, default the form's; a JSON body passes application/json.)
-- Requests go to PREFIX .. token, round-robin over the tokens; each thread starts elsewhere.
-- done() prints one JSON line that the suite reads.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local method, prefix, tokens, body, n, i
local headers = {}

function init(args)
  method, prefix = args[1], args[2]
  tokens, n = {}, 0
  for line in io.lines(args[3]) do
    if #line > 0 then n = n + 1; tokens[n] = line end
  end
  if args[4] then
    local f = assert(io.open(args[4], "rb"))
    body = f:read("*a")
    f:close()
    headers["Content-Type"] = args[5] or "application/x-www-form-urlencoded"
  end
  i = (id * 7919) % n
end

function request()
  i = i % n + 1
  return wrk.format(method, prefix .. tokens[i], headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, "timeouts": %d,' ..
    ' "latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d}}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end

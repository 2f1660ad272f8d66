-- wrk script for scripts/bench.py: every request is a distinct chat, so a recording proxy records each.
--
--   wrk -t1 -c32 -d5s -s scripts/bench_wrk.lua http://127.0.0.1:PORT -- MODE NONCE [CHUNKS GAP_MS]
--
-- MODE is "json" (non-streaming chat) or "stream" (SSE; CHUNKS events GAP_MS apart, sent to the
-- canned upstream as X-Bench-Chunks / X-Bench-Gap-Ms). NONCE keeps runs against one proxy distinct.
-- done() prints one line, "BENCH_JSON {...}", with counts and latency percentiles in microseconds.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_id", #threads)
end

local stream, nonce, counter = false, "0", 0
local question = string.rep("Tell me more about benchmarks. ", 5)

function init(args)
   stream = args[1] == "stream"
   nonce = args[2] or "0"
   wrk.method = "POST"
   wrk.path = "/v1/chat/completions"
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["Authorization"] = "Bearer sk-bench"
   if stream then
      wrk.headers["X-Bench-Chunks"] = args[3] or "200"
      wrk.headers["X-Bench-Gap-Ms"] = args[4] or "0"
   end
end

function request()
   counter = counter + 1
   local body = string.format(
      '{"model":"bench-model","stream":%s,"messages":[{"role":"system","content":"You are a helpful assistant."},' ..
      '{"role":"user","content":"Question %s-%d-%d. %s"}]}',
      stream and "true" or "false", nonce, thread_id, counter, question)
   return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d}}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end

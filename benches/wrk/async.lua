-- wrk script: durable accepts on POST /v1/ai/async (a test-mode standard workflow, so
-- each accepted request also runs to completion in the background).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("EDDY_KEY")
-- EDDY_MSG_BYTES=300000 sends a message of that many bytes instead of the short one.
local content = "Generate a product description for wireless headphones"
local size = tonumber(os.getenv("EDDY_MSG_BYTES") or "")
if size then content = string.rep("x", size) end
wrk.body = '{"workflow":"bench","messages":[{"role":"user","content":"' .. content .. '"}],"metadata":{"product_id":"prod_123"}}'

function done(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format("wrk-summary: %.0f req/s, p50 %.2f ms, p99 %.2f ms, non-2xx %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, non2xx))
end

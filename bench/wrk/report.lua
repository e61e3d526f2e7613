-- Shared by the bench's wrk scripts: done() prints one line "JSON {...}" with exact latency
-- percentiles (microseconds), the request count and every kind of error, for bench/system.py.
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'JSON {"requests": %d, "errors": %d, "status_errors": %d, "p50_us": %d, "p90_us": %d, ' ..
      '"p99_us": %d, "max_us": %d, "duration_us": %d}\n',
      summary.requests, e.connect + e.read + e.write + e.timeout + e.status, e.status,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      summary.duration))
end

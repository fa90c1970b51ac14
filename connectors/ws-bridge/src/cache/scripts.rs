//! The Lua scripts the cache runs in Redis, each one step so that bridges writing the same
//! device at once cannot interleave: a field is written only if it is newer than the one held,
//! and keys' expiries only ever move later.

/// Moves a key's expiry to `at` (ms, `text` as written) if it would otherwise expire more than
/// `slack` ms before that (or never); never brings it earlier.
pub(super) const REFRESH: &str = r"
local function refresh(key, at, text, slack)
  local held = redis.call('PEXPIRETIME', key)
  if held == -1 or held < at - slack then redis.call('PEXPIREAT', key, text) end
end
";

/// Writes a JSON array of devices (ARGV[1]); each field only if newer than what is held, every
/// key expiring at the device's `x` (ms). ARGV[2]: the slack of [`REFRESH`].
pub(super) const WRITE: &str = r"
local slack = tonumber(ARGV[2])
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for _, d in ipairs(cjson.decode(ARGV[1])) do
  local x = tonumber(d.x)
  if x > now_ms then
    local sk = 'device:status:' .. d.k
    local tk = 'tenant:devices:' .. d.t
    redis.call('SADD', 'tenants', d.t)
    redis.call('SADD', tk, d.d)
    refresh(tk, x, d.x, slack)
    redis.call('HSET', sk, 'tenant', d.t, 'device', d.d)
    if d.c then redis.call('HSET', sk, 'class', d.c) end
    if d.ss then
      local since = tonumber(redis.call('HGET', sk, 'since'))
      if not since or since <= tonumber(d.ss) then
        redis.call('HSET', sk, 'status', d.s, 'since', d.ss)
      end
    end
    refresh(sk, x, d.x, slack)
    if d.ls then
      local lk = 'device:lastseen:' .. d.k
      local seen = tonumber(redis.call('GET', lk))
      if not seen or seen <= tonumber(d.ls) then
        redis.call('SET', lk, d.ls)
      end
      refresh(lk, x, d.x, slack)
    end
    if d.ha then
      local hk = 'device:health:' .. d.k
      local at = tonumber(redis.call('HGET', hk, 'at'))
      if not at or at < tonumber(d.ha) then
        redis.call('HSET', hk, 'at', d.ha, 'health', d.h, 'error_rate', d.er)
      end
      refresh(hk, x, d.x, slack)
    end
    if d.a then
      local ak = 'device:anomalies:' .. d.k
      for _, a in ipairs(d.a) do
        local held = redis.call('HGET', ak, a.k)
        local ts = held and tonumber(string.match(held, '^(%d+)'))
        if not ts or ts <= tonumber(a.ts) then redis.call('HSET', ak, a.k, a.ts .. '|' .. a.v) end
      end
      refresh(ak, x, d.x, slack)
    end
  end
end
return 1
";

/// Writes last-seen times alone, the frequent change (one per device and pipeline interval: up to
/// 200,000 a second for a million devices), in as few commands as it can: ARGV[1] the slack of
/// [`REFRESH`], then per device tenant, device, key id, last seen (ms), expiry (ms) and class
/// (empty: none). One `SET ... GET` both writes and reads what was held, and puts that back in
/// the rare case it was newer (a lagging bridge), which nobody sees: a script runs alone. A
/// device Redis does not hold yet is indexed as a whole write would. Needs Redis 7.0
/// (`PEXPIRETIME`).
pub(super) const LAST_SEEN: &str = r"
local slack = tonumber(ARGV[1])
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for i = 2, #ARGV - 5, 6 do
  local t, d, k, ls, xs, c = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local x = tonumber(xs)
  if x > now_ms then
    local sk = 'device:status:' .. k
    local tk = 'tenant:devices:' .. t
    if redis.call('EXISTS', sk) == 0 then
      redis.call('SADD', 'tenants', t)
      redis.call('HSET', sk, 'tenant', t, 'device', d)
      if c ~= '' then redis.call('HSET', sk, 'class', c) end
    end
    -- Always: the index may have expired before the device's keys (its expiry moves in steps).
    redis.call('SADD', tk, d)
    refresh(sk, x, xs, slack)
    refresh(tk, x, xs, slack)
    local lk = 'device:lastseen:' .. k
    local held = redis.call('SET', lk, ls, 'PXAT', xs, 'GET')
    local before = held and tonumber(held)
    if before and before > tonumber(ls) then
      redis.call('SET', lk, held, 'PXAT', xs)
    end
  end
end
return 1
";

/// Deletes devices: ARGV tenant, device, key id of each; a tenant left without devices leaves
/// `tenants`.
pub(super) const DELETE: &str = r"
for i = 1, #ARGV - 2, 3 do
  local t, d, k = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  redis.call('DEL', 'device:status:' .. k, 'device:lastseen:' .. k, 'device:health:' .. k,
    'device:anomalies:' .. k)
  redis.call('SREM', 'tenant:devices:' .. t, d)
  if redis.call('SCARD', 'tenant:devices:' .. t) == 0 then redis.call('SREM', 'tenants', t) end
end
return 1
";

/// Reads. ARGV[1] `members`: the devices of the tenants that follow (all tenants without any),
/// as tenant, device, tenant, device, ... ARGV[1] `read`: the state of the devices that follow
/// as tenant, device, key id, each an array of device, tenant, class, status, since, last seen,
/// health at, health, error rate, anomalies (`kind=value` lines), `false` where Redis has
/// nothing; a device whose keys expired is left out, and out of its tenant's index.
pub(super) const READ: &str = r"
if ARGV[1] == 'members' then
  local tenants = {}
  if #ARGV > 1 then
    for i = 2, #ARGV do tenants[#tenants + 1] = ARGV[i] end
  else
    tenants = redis.call('SMEMBERS', 'tenants')
  end
  local out = {}
  for _, t in ipairs(tenants) do
    for _, d in ipairs(redis.call('SMEMBERS', 'tenant:devices:' .. t)) do
      out[#out + 1] = t
      out[#out + 1] = d
    end
  end
  return out
end
local out = {}
for i = 2, #ARGV - 2, 3 do
  local t, d, k = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local s = redis.call('HMGET', 'device:status:' .. k, 'tenant', 'class', 'status', 'since')
  if s[1] == t then
    local h = redis.call('HMGET', 'device:health:' .. k, 'at', 'health', 'error_rate')
    local flat = redis.call('HGETALL', 'device:anomalies:' .. k)
    local lines = {}
    for j = 1, #flat, 2 do lines[#lines + 1] = flat[j] .. '=' .. flat[j + 1] end
    out[#out + 1] = { d, t, s[2], s[3], s[4], redis.call('GET', 'device:lastseen:' .. k),
      h[1], h[2], h[3], table.concat(lines, '\n') }
  elseif not s[1] then
    redis.call('SREM', 'tenant:devices:' .. t, d)
  end
end
if #out == 0 then return '[]' end
return cjson.encode(out)
";

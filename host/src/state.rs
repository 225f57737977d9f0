//! Where filters' `state` lives: the sandbox's in-process store, or Redis, shared by every
//! gateway pointed at the same server.
//!
//! The Redis store keeps `pool_size` multiplexed connections and spreads calls over them. A
//! call on a broken connection fails (`unavailable`) and drops it; the next call reconnects.
//! When a connection attempt fails, that connection's calls fail at once for `retry_interval`
//! before it tries again, so a dead Redis costs requests nothing but the filter's decision.
//! Counters and rate limits run as Lua scripts, atomic on the server, on the server's clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Script};
use wasmgate_sandbox::{
    Counter, MemoryLimits, MemoryStore, StateError, StateFuture, StateStore, ThrottleResult,
};

use crate::config::StateConfig;

/// The store `config` describes.
pub fn store(config: &StateConfig) -> anyhow::Result<Arc<dyn StateStore>> {
    Ok(match config.backend.as_str() {
        "redis" => Arc::new(RedisStore::new(config)?),
        _ => Arc::new(MemoryStore::new(MemoryLimits {
            max_entries: config.max_entries,
            max_bytes: config.max_bytes,
            max_value_bytes: config.max_value_bytes,
        })),
    })
}

/// `INCRBY` and, for a new counter, its window as the key's expiry; answers the count and
/// the milliseconds left.
const INCR: &str = r"
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {value, ttl}
";

/// GCRA, as `wasmgate_sandbox::gcra` runs it, on the server's clock in microseconds. ARGV:
/// limit, window in ms, cost. Answers allowed (0/1), remaining, retry-after ms, reset ms.
const THROTTLE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = math.max(1, tonumber(ARGV[1]))
local window = math.max(1, tonumber(ARGV[2])) * 1000
local cost = tonumber(ARGV[3])
local interval = math.max(1, math.floor(window / limit))
local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then
  tat = tonumber(stored)
  if not tat then return redis.error_reply('WRONGTYPE the key does not hold a rate limit') end
  if tat < now then tat = now end
end
local function remaining(at)
  local left = math.floor((window - (at - now)) / interval)
  if left < 0 then left = 0 end
  if left > limit then left = limit end
  return left
end
local new_tat = tat + interval * cost
local allow_at = new_tat - window
if now < allow_at then
  return {0, remaining(tat), math.ceil((allow_at - now) / 1000), math.ceil((tat - now) / 1000)}
end
local keep = math.max(1, math.ceil((new_tat - now) / 1000))
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', keep)
return {1, remaining(new_tat), 0, math.ceil((new_tat - now) / 1000)}
";

/// ARGV: whether a value is expected (1/0), the expected value, the new value, ttl ms or ''.
const COMPARE_AND_SET: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
if ARGV[4] == '' then
  redis.call('SET', KEYS[1], ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
return 1
";

/// State in Redis.
pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    connections: Box<[tokio::sync::Mutex<Connection>]>,
    next: AtomicUsize,
    timeout: Duration,
    connect_timeout: Duration,
    retry_interval: Duration,
    max_value_bytes: usize,
    scripts: Scripts,
}

struct Scripts {
    incr: Script,
    throttle: Script,
    compare_and_set: Script,
}

/// One pooled connection: open, or when the last attempt to open it failed.
#[derive(Default)]
struct Connection {
    open: Option<MultiplexedConnection>,
    failed_at: Option<Instant>,
}

impl RedisStore {
    /// A store for `config`'s Redis; connects on first use.
    pub fn new(config: &StateConfig) -> anyhow::Result<RedisStore> {
        let client = redis::Client::open(config.url.as_str())?;
        Ok(RedisStore {
            client,
            prefix: config.key_prefix.clone(),
            connections: (0..config.pool_size.max(1))
                .map(|_| tokio::sync::Mutex::default())
                .collect(),
            next: AtomicUsize::new(0),
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            retry_interval: config.retry_interval,
            max_value_bytes: config.max_value_bytes,
            scripts: Scripts {
                incr: Script::new(INCR),
                throttle: Script::new(THROTTLE),
                compare_and_set: Script::new(COMPARE_AND_SET),
            },
        })
    }

    /// A connection from the pool: open, or opened now, or `unavailable` at once while the
    /// last attempt is younger than `retry_interval`.
    async fn connection(&self) -> Result<(usize, MultiplexedConnection), StateError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let mut slot = self.connections[i].lock().await;
        if let Some(open) = &slot.open {
            return Ok((i, open.clone()));
        }
        if let Some(at) = slot.failed_at
            && at.elapsed() < self.retry_interval
        {
            drop(slot);
            // Another connection may be open again already (Redis came back and it
            // reconnected first): use it rather than fail a call Redis could answer.
            return self.any_open().ok_or_else(|| {
                StateError::Unavailable("redis is unreachable (retrying shortly)".into())
            });
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.timeout));
        match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(open) => {
                tracing::info!(connection = i, "state: connected to redis");
                slot.open = Some(open.clone());
                slot.failed_at = None;
                Ok((i, open))
            }
            Err(e) => {
                if slot.failed_at.is_none() {
                    tracing::warn!(connection = i, "state: cannot connect to redis: {e}");
                }
                slot.failed_at = Some(Instant::now());
                Err(StateError::Unavailable(format!(
                    "redis is unreachable: {}",
                    e.kind_name()
                )))
            }
        }
    }

    /// An open connection from any slot not busy being opened.
    fn any_open(&self) -> Option<(usize, MultiplexedConnection)> {
        self.connections.iter().enumerate().find_map(|(i, slot)| {
            let slot = slot.try_lock().ok()?;
            slot.open.clone().map(|open| (i, open))
        })
    }

    /// Run `call` on a pooled connection under the call timeout; a connection that broke is
    /// dropped so the next call reconnects.
    async fn run<T>(
        &self,
        call: impl AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<T>,
    ) -> Result<T, StateError> {
        let (i, mut conn) = self.connection().await?;
        let result = tokio::time::timeout(self.timeout, call(&mut conn)).await;
        let err = match result {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if is_answer(&e) => return Err(StateError::Invalid(answer(&e))),
            Ok(Err(e)) => e.kind_name().to_string(),
            Err(_) => "timed out".to_string(),
        };
        let mut slot = self.connections[i].lock().await;
        if slot.open.is_some() {
            tracing::warn!(
                connection = i,
                "state: redis call failed ({err}); reconnecting"
            );
            slot.open = None;
        }
        Err(StateError::Unavailable(format!("redis: {err}")))
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// An error Redis answered (the command ran and refused), rather than a broken connection.
fn is_answer(e: &redis::RedisError) -> bool {
    !(e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal())
}

fn answer(e: &redis::RedisError) -> String {
    let text = e.detail().unwrap_or_else(|| e.kind_name());
    format!("redis refused: {text}")
}

trait KindName {
    fn kind_name(&self) -> &'static str;
}

impl KindName for redis::RedisError {
    /// A short, fixed description (no addresses or server text) for filters and logs.
    fn kind_name(&self) -> &'static str {
        if self.is_timeout() {
            "timed out"
        } else if self.is_connection_refusal() {
            "connection refused"
        } else if self.is_connection_dropped() {
            "connection dropped"
        } else if self.is_io_error() {
            "i/o error"
        } else {
            "error"
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl StateStore for RedisStore {
    fn incr(&self, key: String, delta: u64, window: Duration) -> StateFuture<'_, Counter> {
        Box::pin(async move {
            let key = self.key(&key);
            let (value, reset_ms): (u64, u64) = self
                .run(async |c| {
                    self.scripts
                        .incr
                        .key(&key)
                        .arg(delta)
                        .arg(millis(window))
                        .invoke_async(c)
                        .await
                })
                .await?;
            Ok(Counter { value, reset_ms })
        })
    }

    fn throttle(
        &self,
        key: String,
        limit: u32,
        window: Duration,
        cost: u32,
    ) -> StateFuture<'_, ThrottleResult> {
        Box::pin(async move {
            let key = self.key(&key);
            let (allowed, remaining, retry_after_ms, reset_ms): (u8, u32, u64, u64) = self
                .run(async |c| {
                    self.scripts
                        .throttle
                        .key(&key)
                        .arg(limit)
                        .arg(millis(window))
                        .arg(cost)
                        .invoke_async(c)
                        .await
                })
                .await?;
            Ok(ThrottleResult {
                allowed: allowed == 1,
                limit: limit.max(1),
                remaining,
                retry_after_ms,
                reset_ms,
            })
        })
    }

    fn get(&self, key: String) -> StateFuture<'_, Option<Vec<u8>>> {
        Box::pin(async move {
            let key = self.key(&key);
            self.run(async |c| redis::cmd("GET").arg(&key).query_async(c).await)
                .await
        })
    }

    fn set(&self, key: String, value: Vec<u8>, ttl: Option<Duration>) -> StateFuture<'_, ()> {
        Box::pin(async move {
            let key = self.key(&key);
            self.run(async |c| {
                let mut cmd = redis::cmd("SET");
                cmd.arg(&key).arg(&value);
                if let Some(ttl) = ttl {
                    cmd.arg("PX").arg(millis(ttl));
                }
                cmd.query_async(c).await
            })
            .await
        })
    }

    fn delete(&self, key: String) -> StateFuture<'_, bool> {
        Box::pin(async move {
            let key = self.key(&key);
            let n: u64 = self
                .run(async |c| redis::cmd("DEL").arg(&key).query_async(c).await)
                .await?;
            Ok(n > 0)
        })
    }

    fn compare_and_set(
        &self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> StateFuture<'_, bool> {
        Box::pin(async move {
            let key = self.key(&key);
            let stored: u8 = self
                .run(async |c| {
                    self.scripts
                        .compare_and_set
                        .key(&key)
                        .arg(if expected.is_some() { "1" } else { "0" })
                        .arg(expected.as_deref().unwrap_or_default())
                        .arg(&value)
                        .arg(ttl.map_or(String::new(), |t| millis(t).to_string()))
                        .invoke_async(c)
                        .await
                })
                .await?;
            Ok(stored == 1)
        })
    }

    fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }
}

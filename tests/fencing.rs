//! The fencing pattern the README documents: a resource rejects a token that is not
//! greater than the highest it accepted, except the same acquisition's (same writer id)
//! — so that a repeated token, after Redis lost its last writes, never lets two holders
//! write.

mod support;

use std::time::Duration;

use rdlock::RdLockConnectionManager;
use support::RedisServer;

/// The README's script, verbatim (the test fails if the README's copy changes).
const FENCED_WRITE_BY_WRITER: &str = r"-- KEYS[1] = resource's highest fence, KEYS[2] = the writer id that wrote with it,
-- KEYS[3] = resource data; ARGV[1] = fence, ARGV[2] = writer id (one per acquisition),
-- ARGV[3] = value
local max = tonumber(redis.call('GET', KEYS[1]) or '0')
local fence = tonumber(ARGV[1])
if fence < max or (fence == max and redis.call('GET', KEYS[2]) ~= ARGV[2]) then
  return 0   -- a later holder, or another holder with the same token, has written
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('RPUSH', KEYS[3], ARGV[3])
return 1
";

#[test]
fn the_readme_shows_this_script() {
    let readme = include_str!("../README.md");
    assert!(
        readme.contains(FENCED_WRITE_BY_WRITER),
        "README's fenced-write script differs from the tested one"
    );
}

async fn write(
    resource: &mut redis::aio::MultiplexedConnection,
    fence: u64,
    writer: &str,
    value: &str,
) -> bool {
    let accepted: i64 = redis::Script::new(FENCED_WRITE_BY_WRITER)
        .key("resource:fence")
        .key("resource:writer")
        .key("resource:log")
        .arg(fence)
        .arg(writer)
        .arg(value)
        .invoke_async(resource)
        .await
        .unwrap();
    accepted == 1
}

fn writer_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[tokio::test]
async fn a_repeated_token_lets_only_one_holder_write() {
    let server = RedisServer::start();
    let resource_server = RedisServer::start();
    let mut resource = resource_server.conn().await;
    let mut raw = server.conn().await;
    let manager = RdLockConnectionManager::new(server.url()).await.unwrap();
    let lock = manager
        .new_lock("fenced")
        .with_lease(Duration::from_secs(30));

    let first = lock.try_lock().await.unwrap();
    let first_writer = writer_id();
    assert!(write(&mut resource, first.fencing_token(), &first_writer, "a1").await);
    assert!(write(&mut resource, first.fencing_token(), &first_writer, "a2").await);

    // Redis loses its last writes (say, a restart from an older snapshot): the lock key
    // and the counter's last increment are gone.
    let lost = first.fencing_token();
    let _: () = redis::cmd("SET")
        .arg("rdlock:{fenced}:fence")
        .arg(lost - 1)
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(lock.key())
        .query_async(&mut raw)
        .await
        .unwrap();
    let other = RdLockConnectionManager::new(server.url()).await.unwrap();
    let second = other.new_lock("fenced").try_lock().await.unwrap();
    assert_eq!(second.fencing_token(), lost, "the token repeats");
    let second_writer = writer_id();
    // Same token, another acquisition: rejected, while the first holder goes on.
    assert!(!write(&mut resource, second.fencing_token(), &second_writer, "b1").await);
    assert!(write(&mut resource, first.fencing_token(), &first_writer, "a3").await);
    drop(first);
    drop(second);

    // A later acquisition writes, and then the old token is refused to everyone.
    let third = lock.lock().await.unwrap();
    assert!(third.fencing_token() > lost);
    let third_writer = writer_id();
    assert!(write(&mut resource, third.fencing_token(), &third_writer, "c1").await);
    assert!(!write(&mut resource, lost, &first_writer, "a4").await);
    let log: Vec<String> = redis::cmd("LRANGE")
        .arg("resource:log")
        .arg(0)
        .arg(-1)
        .query_async(&mut resource)
        .await
        .unwrap();
    assert_eq!(log, ["a1", "a2", "a3", "c1"]);
}

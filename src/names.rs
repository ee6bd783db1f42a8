//! The Redis key and channel names of a lock: part of the public contract.

/// Every Redis name used by one lock id.
///
/// All names share the hash tag `{<escaped id>}`, so the multi-key scripts run unchanged
/// on Redis Cluster. The id is escaped (`%` → `%25`, `{` → `%7B`, `}` → `%7D`) so that
/// braces in an id can neither end the hash tag early nor leave it empty; distinct ids
/// still map to distinct keys.
#[derive(Debug)]
pub(crate) struct LockNames {
    /// `rdlock:{id}:lock` — the owner token, with the lease as its PX expiry.
    pub(crate) key: String,
    /// `rdlock:{id}:fence` — the fencing counter; never expires, never deleted.
    pub(crate) fence: String,
    /// `rdlock:{id}:owner` — who holds the lock; same lease as the lock key.
    pub(crate) owner: String,
    /// `rdlock:{id}:waiters` — set by a failed acquire attempt of a lock with 1.x
    /// compatibility (which does not queue), with the holder's remaining lease
    /// (extended by renewals): a release that passes no turn publishes only while it
    /// exists, so an uncontended release sends no message.
    pub(crate) waiters: String,
    /// `rdlock:{id}:queue` — the processes waiting for the lock, oldest first (a list
    /// of process ids, see [`crate::queue`]); lives as long as the lock at least.
    pub(crate) queue: String,
    /// `rdlock:{id}:release` — the release script publishes here.
    pub(crate) release_channel: String,
    /// `__keyspace@<db>__:rdlock:{id}:lock`, when the server has keyspace events on.
    pub(crate) keyspace_channel: Option<String>,
    /// The rdlock 1.x key and its keyspace channel, for a lock with 1.x compatibility
    /// ([`Lock::with_v1_compat`](crate::Lock::with_v1_compat)); `None` otherwise, and
    /// then no script touches a `/rdlock/` key.
    pub(crate) v1: Option<V1Names>,
}

/// The names rdlock 1.x used for a lock id (its `get_redis_lock_location`): the key is
/// the raw id, not escaped, outside any hash tag.
#[derive(Debug)]
pub(crate) struct V1Names {
    /// `/rdlock/<id>/.lock`.
    pub(crate) key: String,
    /// `__keyspace@<db>__:/rdlock/<id>/.lock`, when the server has keyspace events on:
    /// a 1.x holder releases with a plain `DEL`, which only this channel announces.
    pub(crate) keyspace_channel: Option<String>,
}

impl LockNames {
    pub(crate) fn new(id: &str, keyspace_db: Option<i64>) -> Self {
        let tag = escape_id(id);
        let key = format!("rdlock:{{{tag}}}:lock");
        Self {
            fence: format!("rdlock:{{{tag}}}:fence"),
            owner: format!("rdlock:{{{tag}}}:owner"),
            waiters: format!("rdlock:{{{tag}}}:waiters"),
            queue: format!("rdlock:{{{tag}}}:queue"),
            release_channel: format!("rdlock:{{{tag}}}:release"),
            keyspace_channel: keyspace_db.map(|db| format!("__keyspace@{db}__:{key}")),
            key,
            v1: None,
        }
    }

    /// The same names, plus the rdlock 1.x key of `id`.
    pub(crate) fn with_v1(mut self, id: &str, keyspace_db: Option<i64>) -> Self {
        let key = format!("/rdlock/{id}/.lock");
        self.v1 = Some(V1Names {
            keyspace_channel: keyspace_db.map(|db| format!("__keyspace@{db}__:{key}")),
            key,
        });
        self
    }
}

fn escape_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag Redis Cluster would use: the text between the first `{` and the
    /// first `}` after it, when that text is not empty.
    fn hash_tag(key: &str) -> Option<&str> {
        let open = key.find('{')?;
        let close = key[open + 1..].find('}')? + open + 1;
        (close > open + 1).then(|| &key[open + 1..close])
    }

    #[test]
    fn all_names_share_one_nonempty_hash_tag() {
        for id in ["job", "}", "{", "{}", "}{", "a}b{c", "%7D", "", "日本語"] {
            let n = LockNames::new(id, Some(3));
            let tag = hash_tag(&n.key);
            if id.is_empty() {
                // Empty ids are refused before any name is used.
                continue;
            }
            assert!(tag.is_some(), "id {id:?} gave key {:?}", n.key);
            assert_eq!(tag, hash_tag(&n.fence), "id {id:?}");
            assert_eq!(tag, hash_tag(&n.owner), "id {id:?}");
            assert_eq!(tag, hash_tag(&n.waiters), "id {id:?}");
            assert_eq!(tag, hash_tag(&n.release_channel), "id {id:?}");
        }
    }

    #[test]
    fn escaping_keeps_ids_distinct() {
        let a = LockNames::new("{", None).key;
        let b = LockNames::new("%7B", None).key;
        assert_ne!(a, b);
        assert_eq!(LockNames::new("job", Some(0)).key, "rdlock:{job}:lock");
        assert_eq!(LockNames::new("job", None).waiters, "rdlock:{job}:waiters");
        assert_eq!(
            LockNames::new("job", Some(2)).keyspace_channel.as_deref(),
            Some("__keyspace@2__:rdlock:{job}:lock")
        );
    }

    #[test]
    fn v1_names_are_those_of_rdlock_1x() {
        assert!(LockNames::new("a{b}", Some(0)).v1.is_none());
        let names = LockNames::new("a{b}", Some(3)).with_v1("a{b}", Some(3));
        let v1 = names.v1.expect("v1 names");
        // rdlock 1.0.3, utils::get_redis_lock_location: the raw id.
        assert_eq!(v1.key, "/rdlock/a{b}/.lock");
        assert_eq!(
            v1.keyspace_channel.as_deref(),
            Some("__keyspace@3__:/rdlock/a{b}/.lock")
        );
        assert_eq!(names.key, "rdlock:{a%7Bb%7D}:lock");
        let quiet = LockNames::new("x", None).with_v1("x", None);
        assert!(quiet.v1.expect("v1 names").keyspace_channel.is_none());
    }
}

//! The storage write pattern of atender-webhooks' publish and outcome paths, on three embedded
//! engines: sled 0.34 (what the daemon uses), fjall 2 (an LSM tree) and redb 2 (a copy-on-write
//! B-tree). One writer thread, as the daemon's publish writer and recorder are.
//!
//! ```text
//! ENGINE=sled|fjall|redb EVENTS=20000 FANOUT=10 cargo run --release
//! ```
//!
//! Publish: groups of `GROUP` (26) events, each group one atomic write of, per event, its
//! record (~480 B of chat-like JSON) and per delivery a record (~200 B), a queue key and a log
//! key (1-byte value), then made durable (fsync) before the next group — the daemon's group
//! commit (sled: `flush` + `fdatasync` of its file, as `store/embedded/commit.rs` does; fjall:
//! `persist(SyncData)` of its journal; redb: a durable commit). Outcomes: groups of 32
//! deliveries in id order, each read and rewritten, its queue key removed and its log value
//! changed; not made durable (the daemon does not wait for outcomes; redb's non-durable commits
//! keep every page until a durable one, so its disk figure after outcomes is not comparable).
//!
//! Prints, per engine: publish events/s and CPU µs per delivery, outcomes deliveries/s and CPU
//! µs per delivery, the directory's size after publishing and 3 s after the outcomes, and
//! (fjall) after a major compaction. Other knobs: `DIR` (default /tmp), `FJALL_JOURNAL_MB`
//! (fjall's journal cap, default 64).

use std::path::Path;
use std::time::Instant;

use redb::ReadableTable;

fn id(prefix: &str, n: u64) -> Vec<u8> {
    // Fixed-length, sorting like a ULID made in order: prefix + 26 base-32 digits.
    const DIGITS: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut out = prefix.as_bytes().to_vec();
    let mut digits = [b'0'; 26];
    let mut value = n as u128 * 7_919 + (1u128 << 100);
    for slot in digits.iter_mut().rev() {
        *slot = DIGITS[(value % 32) as usize];
        value /= 32;
    }
    out.extend_from_slice(&digits);
    out
}

const WORDS: &[&str] = &[
    "the", "I", "to", "you", "a", "and", "is", "it", "of", "for", "my", "order", "please", "thanks",
    "delivery", "address", "refund", "tracking", "package", "today", "tomorrow", "help", "hola",
];

fn event_body(n: u64) -> Vec<u8> {
    let mut text = String::new();
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while text.len() < 220 {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        text.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
        text.push(' ');
    }
    format!(
        "{{\"type\":\"message.received\",\"timestamp\":\"2026-12-05T21:00:00.000Z\",\"data\":{{\"conversationId\":\"c_{n}\",\"text\":\"{text}\"}},\"id\":\"{}\",\"tenant\":\"acme\",\"extra\":\"{}\"}}",
        String::from_utf8_lossy(&id("evt_", n)),
        "x".repeat(40)
    )
    .into_bytes()
}

fn delivery_value(n: u64, state: u8) -> Vec<u8> {
    let mut value = vec![1u8, state];
    value.extend_from_slice(&id("evt_", n / 10));
    value.extend_from_slice(&id("wh_", 1)[..29]);
    value.resize(200, 7);
    value
}

struct Keys {
    event: Vec<u8>,
    deliveries: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>, // (delivery key, queue key, log key)
}

fn keys_of(event: u64, fanout: u64) -> Keys {
    let deliveries = (0..fanout)
        .map(|s| {
            let n = event * fanout + s;
            let delivery = id("dlv_", n);
            let subscription = &id("wh_", s)[..29];
            let mut queue = subscription.to_vec();
            queue.extend_from_slice(&(1_700_000_000_000u64 + n).to_be_bytes());
            queue.extend_from_slice(&delivery);
            let mut log = subscription.to_vec();
            log.extend_from_slice(&delivery);
            (delivery, queue, log)
        })
        .collect();
    Keys { event: id("evt_", event), deliveries }
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { dir_size(&entry.path()) } else { meta.len() };
    }
    total
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

trait Engine {
    fn publish(&mut self, group: &[(u64, Keys)]);
    fn outcomes(&mut self, group: &[(u64, &(Vec<u8>, Vec<u8>, Vec<u8>))]);
    fn finish(&mut self);
    /// Compacts everything, if the engine can (a floor, not what a running daemon has).
    fn compact(&mut self) -> bool {
        false
    }
}

struct Sled {
    db: sled::Db,
    file: std::fs::File,
    trees: [sled::Tree; 4],
}

impl Engine for Sled {
    fn publish(&mut self, group: &[(u64, Keys)]) {
        use sled::Transactional;
        let [events, deliveries, queue, log] = &self.trees;
        (events, deliveries, queue, log)
            .transaction(|(events, deliveries, queue, log)| {
                for (n, keys) in group {
                    events.insert(keys.event.as_slice(), event_body(*n))?;
                    for (i, (delivery, q, l)) in keys.deliveries.iter().enumerate() {
                        deliveries.insert(delivery.as_slice(), delivery_value(n * 10 + i as u64, 0))?;
                        queue.insert(q.as_slice(), &[])?;
                        log.insert(l.as_slice(), &[0])?;
                    }
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .unwrap();
        self.db.flush().unwrap();
        self.file.sync_data().unwrap();
    }

    fn outcomes(&mut self, group: &[(u64, &(Vec<u8>, Vec<u8>, Vec<u8>))]) {
        use sled::Transactional;
        let [_, deliveries, queue, log] = &self.trees;
        (deliveries, queue, log)
            .transaction(|(deliveries, queue, log)| {
                for (n, (delivery, q, l)) in group {
                    let _old = deliveries.get(delivery.as_slice())?.unwrap();
                    deliveries.insert(delivery.as_slice(), delivery_value(*n, 2))?;
                    queue.remove(q.as_slice())?;
                    log.insert(l.as_slice(), &[2])?;
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .unwrap();
    }

    fn finish(&mut self) {
        self.db.flush().unwrap();
    }
}

struct Fjall {
    keyspace: fjall::Keyspace,
    parts: [fjall::PartitionHandle; 4],
}

impl Engine for Fjall {
    fn publish(&mut self, group: &[(u64, Keys)]) {
        let [events, deliveries, queue, log] = &self.parts;
        let mut batch = self.keyspace.batch();
        for (n, keys) in group {
            batch.insert(events, keys.event.as_slice(), event_body(*n));
            for (i, (delivery, q, l)) in keys.deliveries.iter().enumerate() {
                batch.insert(deliveries, delivery.as_slice(), delivery_value(n * 10 + i as u64, 0));
                batch.insert(queue, q.as_slice(), []);
                batch.insert(log, l.as_slice(), [0]);
            }
        }
        batch.commit().unwrap();
        self.keyspace.persist(fjall::PersistMode::SyncData).unwrap();
    }

    fn outcomes(&mut self, group: &[(u64, &(Vec<u8>, Vec<u8>, Vec<u8>))]) {
        let [_, deliveries, queue, log] = &self.parts;
        let mut batch = self.keyspace.batch();
        for (n, (delivery, q, l)) in group {
            let _old = deliveries.get(delivery.as_slice()).unwrap().unwrap();
            batch.insert(deliveries, delivery.as_slice(), delivery_value(*n, 2));
            batch.remove(queue, q.as_slice());
            batch.insert(log, l.as_slice(), [2]);
        }
        batch.commit().unwrap();
    }

    fn finish(&mut self) {
        self.keyspace.persist(fjall::PersistMode::SyncData).unwrap();
    }

    fn compact(&mut self) -> bool {
        for part in &self.parts {
            part.major_compact().unwrap();
        }
        true
    }
}

const TABLES: [redb::TableDefinition<&[u8], &[u8]>; 4] = [
    redb::TableDefinition::new("events"),
    redb::TableDefinition::new("deliveries"),
    redb::TableDefinition::new("queue"),
    redb::TableDefinition::new("log"),
];

struct Redb {
    db: redb::Database,
}

impl Engine for Redb {
    fn publish(&mut self, group: &[(u64, Keys)]) {
        let txn = self.db.begin_write().unwrap();
        {
            let mut events = txn.open_table(TABLES[0]).unwrap();
            let mut deliveries = txn.open_table(TABLES[1]).unwrap();
            let mut queue = txn.open_table(TABLES[2]).unwrap();
            let mut log = txn.open_table(TABLES[3]).unwrap();
            for (n, keys) in group {
                events.insert(keys.event.as_slice(), event_body(*n).as_slice()).unwrap();
                for (i, (delivery, q, l)) in keys.deliveries.iter().enumerate() {
                    deliveries
                        .insert(delivery.as_slice(), delivery_value(n * 10 + i as u64, 0).as_slice())
                        .unwrap();
                    queue.insert(q.as_slice(), [].as_slice()).unwrap();
                    log.insert(l.as_slice(), [0u8].as_slice()).unwrap();
                }
            }
        }
        txn.commit().unwrap();
    }

    fn outcomes(&mut self, group: &[(u64, &(Vec<u8>, Vec<u8>, Vec<u8>))]) {
        let mut txn = self.db.begin_write().unwrap();
        txn.set_durability(redb::Durability::None);
        {
            let mut deliveries = txn.open_table(TABLES[1]).unwrap();
            let mut queue = txn.open_table(TABLES[2]).unwrap();
            let mut log = txn.open_table(TABLES[3]).unwrap();
            for (n, (delivery, q, l)) in group {
                let _old = deliveries.get(delivery.as_slice()).unwrap().unwrap().value().len();
                deliveries.insert(delivery.as_slice(), delivery_value(*n, 2).as_slice()).unwrap();
                queue.remove(q.as_slice()).unwrap();
                log.insert(l.as_slice(), [2u8].as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    fn finish(&mut self) {
        let txn = self.db.begin_write().unwrap();
        txn.commit().unwrap();
    }
}

fn main() {
    let engine = std::env::var("ENGINE").unwrap_or_else(|_| "sled".into());
    let knob =
        |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (events, fanout, group_size) = (knob("EVENTS", 100_000), knob("FANOUT", 10), knob("GROUP", 26));
    let temp = std::env::var("DIR").unwrap_or_else(|_| "/tmp".into());
    let dir = Path::new(&temp).join(format!("engines-{engine}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut store: Box<dyn Engine> = match engine.as_str() {
        "sled" => {
            let db = sled::Config::new()
                .path(&dir)
                .cache_capacity(32 << 20)
                .flush_every_ms(Some(500))
                .open()
                .unwrap();
            let file = std::fs::File::open(dir.join("db")).unwrap();
            let trees = ["events", "deliveries", "queue", "log"].map(|name| db.open_tree(name).unwrap());
            Box::new(Sled { db, file, trees })
        }
        "fjall" => {
            let journal_mb =
                std::env::var("FJALL_JOURNAL_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(64u64);
            let keyspace = fjall::Config::new(&dir)
                .cache_size(32 << 20)
                .max_journaling_size(journal_mb << 20)
                .open()
                .unwrap();
            let parts = ["events", "deliveries", "queue", "log"]
                .map(|name| keyspace.open_partition(name, fjall::PartitionCreateOptions::default()).unwrap());
            Box::new(Fjall { keyspace, parts })
        }
        "redb" => Box::new(Redb { db: redb::Database::create(dir.join("db.redb")).unwrap() }),
        other => panic!("ENGINE={other}?"),
    };

    let (cpu, started) = (cpu_seconds(), Instant::now());
    let mut event = 0;
    while event < events {
        let group: Vec<(u64, Keys)> =
            (event..(event + group_size).min(events)).map(|n| (n, keys_of(n, fanout))).collect();
        event += group.len() as u64;
        store.publish(&group);
    }
    let (publish_s, publish_cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    let size_published = dir_size(&dir);

    let (cpu, started) = (cpu_seconds(), Instant::now());
    let mut pending: Vec<(u64, (Vec<u8>, Vec<u8>, Vec<u8>))> = Vec::with_capacity(32);
    for n in 0..events {
        for (i, keys) in keys_of(n, fanout).deliveries.into_iter().enumerate() {
            pending.push((n * fanout + i as u64, keys));
            if pending.len() == 32 {
                let group: Vec<_> = pending.iter().map(|(n, keys)| (*n, keys)).collect();
                store.outcomes(&group);
                pending.clear();
            }
        }
    }
    let group: Vec<_> = pending.iter().map(|(n, keys)| (*n, keys)).collect();
    store.outcomes(&group);
    store.finish();
    let (outcome_s, outcome_cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let size_done = dir_size(&dir);
    let deliveries = (events * fanout) as f64;
    let compacted = store.compact().then(|| dir_size(&dir) as f64 / 1e6);
    println!(
        "{engine}\tevents {events}\tfan-out {fanout}\tpublish {:.0} events/s ({:.1} µs CPU/delivery)\toutcomes {:.0} deliveries/s ({:.1} µs CPU/delivery)\tdisk after publish {:.1} MB, after outcomes {:.1} MB ({:.0} B/delivery); after a major compaction {:?} MB",
        events as f64 / publish_s,
        publish_cpu * 1e6 / deliveries,
        deliveries / outcome_s,
        outcome_cpu * 1e6 / deliveries,
        size_published as f64 / 1e6,
        size_done as f64 / 1e6,
        size_done as f64 / deliveries,
        compacted,
    );
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}

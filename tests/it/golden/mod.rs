//! The stored format, pinned: `tests/golden/store/` is a whole store as this format writes
//! it, one file per entry (`<tree>/<key in hex>`, the file holding the value's bytes),
//! with `tests/golden/ids.txt` for the public ids it hands out. It holds one value of every
//! stored type (see `scenario`): records in every state, every kind of timeline step, dead
//! letters, every catalog type, the request log's summaries, the due index, an idempotency
//! claim, big texts in chunks, and the `meta` keys.
//!
//! Two tests hold it in place:
//! - [`this_build_writes_the_golden_store`]: the scenario written by this build through
//!   the store's own API is the committed store, key for key and byte for byte (so every
//!   value re-encodes to the bytes it was read from, and every key is where it was);
//! - [`the_golden_store_reads_back`]: this build opens the committed store and reads every
//!   entry back as the scenario's values, through the same calls eddy makes.
//!
//! A reordered enum variant, a new field or a moved key fails one of them before it can
//! make a store unreadable. When the change is meant, `ARCHITECTURE.md` ("Changing a stored
//! type") says what to do; then `EDDY_BLESS=1 cargo test --test it golden` writes the files
//! again (and the `store_record` fuzz seeds with them).

pub mod scenario;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use eddy::catalog::{ApiKey, Endpoint, StructuredOutput, Workflow};
use eddy::catalog::{Catalog, Project, ProviderCredential};
use eddy::job::{Request, Step};
use eddy::store::catalog::Kind;
use eddy::store::{Claim, Cursor, LogQuery, Store, Summary};
use tokio::sync::OnceCell;

use crate::support::eventually;
use scenario::{CatalogEntries, ChannelId, REQUESTS, T0, channel, channel_text, project};

/// Every entry of a store: (tree, key) → value.
type Dump = BTreeMap<(String, Vec<u8>), Vec<u8>>;

/// The public ids of the golden store, by what they name.
#[derive(Debug, Clone, PartialEq)]
struct PublicIds {
    /// Each request's id and channel id, by scenario index.
    requests: Vec<(u64, ChannelId)>,
    /// The dead letters' ids, oldest first.
    dead_letters: Vec<String>,
    /// The list cursor just after request 4.
    cursor: String,
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn blessing() -> bool {
    std::env::var_os("EDDY_BLESS").is_some()
}

/// The committed golden store and ids; with `EDDY_BLESS` set, written first from this
/// build (once, for both tests).
async fn golden() -> &'static (Dump, PublicIds) {
    static GOLDEN: OnceCell<(Dump, PublicIds)> = OnceCell::const_new();
    GOLDEN
        .get_or_init(async || {
            if blessing() {
                let dir = tempfile::tempdir().expect("temp dir");
                let ids = write_scenario(dir.path(), None).await;
                bless(&dump(dir.path()).await, &ids);
            }
            (read_golden_store(), read_ids())
        })
        .await
}

/// The scenario written by this build is the committed golden store, byte for byte: no
/// stored type, key layout or index entry changed.
#[tokio::test]
async fn this_build_writes_the_golden_store() {
    let (golden, ids) = golden().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let written = write_scenario(dir.path(), Some(ids)).await;
    assert_eq!(&written, ids, "the store hands out the ids it handed out");
    let problems = differences(golden, &dump(dir.path()).await);
    assert!(
        problems.is_empty(),
        "the stored format changed:\n{}\n\nA store written before this change would not read \
         back the same. If the change is meant, follow ARCHITECTURE.md, \"Changing a stored \
         type\" (a new format version and a decoder for the old one), then write the golden \
         files again: EDDY_BLESS=1 cargo test --test it golden",
        problems.join("\n")
    );
}

/// This build opens the committed golden store and reads every entry as the scenario's
/// value: records (with their big texts), timelines, summaries and counts, dead letters,
/// public ids, the idempotency claim, `meta`, and every catalog type.
#[tokio::test]
async fn the_golden_store_reads_back() {
    let (golden, ids) = golden().await;
    let dir = tempfile::tempdir().expect("temp dir");
    load(dir.path(), golden).await;
    let store = open_store(dir.path()).await;
    let records = scenario::requests(&ids.requests);
    check_requests(&store, ids, &records).await;
    check_dead_letters(&store, ids, &records).await;
    check_catalog(&store, &scenario::catalog()).await;
    // `meta_or_init` stores (and returns) the empty value when the key is missing.
    let ws_key = store.meta_or_init("ws_token_key", Vec::new).await.unwrap();
    assert_eq!(ws_key, scenario::WS_TOKEN_KEY, "meta/ws_token_key");
    for ((tree, key), value) in golden.iter().filter(|((tree, _), _)| tree == "requests") {
        let record = eddy::store::decode_request(value)
            .unwrap_or_else(|e| panic!("{tree}/{}: {e}", hex(key)));
        let again = eddy::store::encode_request(&record).unwrap();
        assert_eq!(&again, value, "{tree}/{} re-encodes to its bytes", hex(key));
    }
}

async fn check_requests(store: &Store, ids: &PublicIds, records: &[Request]) {
    let project = project();
    for (n, expected) in records.iter().enumerate() {
        let id = expected.id;
        let read = store.request(id).await.unwrap();
        assert_eq!(
            read.as_ref(),
            Some(expected),
            "request {n} ({:?})",
            expected.state
        );
        let by_channel = store
            .request_by_channel(&expected.channel_id)
            .await
            .unwrap();
        assert_eq!(
            by_channel.map(|r| r.id),
            Some(id),
            "request {n} by its channel id"
        );
        let summary = store
            .summary_by_channel(&project, &expected.channel_id)
            .await
            .unwrap();
        assert_eq!(
            summary,
            Some((id, Summary::of(expected))),
            "request {n}'s summary"
        );
        let steps: Vec<(u64, Step)> = scenario::timeline(n).into_iter().flatten().collect();
        assert_eq!(
            store.timeline(id).await.unwrap(),
            steps,
            "request {n}'s timeline"
        );
    }
    let query = LogQuery {
        limit: 100,
        ..LogQuery::default()
    };
    let (listed, _) = store.list_requests(&project, &query).unwrap();
    let newest_first: Vec<Summary> = records.iter().rev().map(Summary::of).collect();
    assert_eq!(listed, newest_first, "the request log");
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for record in records {
        *counts.entry(record.state.as_str()).or_default() += 1;
    }
    for (state, count) in store.state_counts() {
        assert_eq!(
            count,
            counts.get(state.as_str()).copied().unwrap_or(0),
            "{} requests",
            state.as_str()
        );
    }
    let cursor = Cursor {
        created_ms: records[4].created_ms,
        id: records[4].id,
    };
    assert_eq!(
        store.parse_cursor(&ids.cursor),
        Some(cursor),
        "the list cursor"
    );
    assert_eq!(store.cursor_text(cursor).unwrap(), ids.cursor);
    // A repeat of request 0's Idempotency-Key finds it, and stores nothing.
    let mut repeat = records[0].clone();
    repeat.id = u64::MAX;
    repeat.created_ms = T0 + 60_000;
    let hash = eddy::secret::hash_key(scenario::IDEMPOTENCY_KEY);
    let claim = store
        .insert_request_once(&mut repeat, &project, &hash, 86_400_000)
        .await
        .unwrap();
    assert!(
        matches!(claim, Claim::Existing(id) if id == records[0].id),
        "{claim:?}"
    );
}

async fn check_dead_letters(store: &Store, ids: &PublicIds, records: &[Request]) {
    let project = project();
    let expected = scenario::dead_letters(&records[6]);
    assert_eq!(
        store.dlq_len(),
        expected.len() as i64,
        "dead letters counted"
    );
    let newest_first: Vec<_> = ids
        .dead_letters
        .iter()
        .cloned()
        .zip(expected.iter().cloned())
        .rev()
        .collect();
    assert_eq!(
        store.dead_letters(&project, None, 10).await.unwrap(),
        newest_first
    );
    for (id, entry) in &newest_first {
        assert_eq!(
            store.dead_letter(&project, id).await.unwrap().as_ref(),
            Some(entry),
            "{id}"
        );
    }
}

async fn check_catalog(store: &Store, expected: &CatalogEntries) {
    let project = project();
    let load = |kind| Loaded(store, kind);
    let project_entries = load(Kind::Project).all::<Project>();
    assert_eq!(project_entries, std::slice::from_ref(&expected.project));
    assert_eq!(load(Kind::ApiKey).all::<ApiKey>(), expected.keys);
    assert_eq!(load(Kind::Workflow).all::<Workflow>(), expected.workflows);
    assert_eq!(
        load(Kind::StructuredOutput).all::<StructuredOutput>(),
        expected.outputs
    );
    assert_eq!(load(Kind::Endpoint).all::<Endpoint>(), expected.endpoints);
    assert_eq!(
        load(Kind::Provider).all::<ProviderCredential>(),
        expected.providers
    );

    // The catalog finds each entry where the store keeps it, and deletes it there.
    let catalog = Catalog::load(store.clone()).unwrap();
    let key = catalog
        .authenticate(scenario::API_KEY, T0)
        .expect("the API key authenticates");
    assert_eq!(
        *key,
        expected
            .keys
            .iter()
            .find(|k| k.id == key.id)
            .unwrap()
            .clone()
    );
    assert_eq!(
        catalog.project(&project).as_deref(),
        Some(&expected.project)
    );
    for w in &expected.workflows {
        assert_eq!(catalog.workflow(&project, &w.name).as_deref(), Some(w));
        catalog
            .delete_workflow(&project, &w.name)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", w.name));
    }
    for o in &expected.outputs {
        assert_eq!(
            catalog.structured_output(&project, &o.id).as_deref(),
            Some(o)
        );
        catalog
            .delete_structured_output(&project, &o.id)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", o.id));
    }
    for e in &expected.endpoints {
        assert_eq!(catalog.endpoint(&project, &e.id).as_deref(), Some(e));
        catalog
            .delete_endpoint(&project, &e.id)
            .await
            .unwrap_or_else(|err| panic!("{}: {err}", e.id));
    }
    for p in &expected.providers {
        assert_eq!(catalog.provider(&project, &p.name).as_deref(), Some(p));
        catalog
            .delete_provider(&project, &p.name)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", p.name));
    }
    for k in &expected.keys {
        // A key may revoke itself.
        catalog
            .revoke_key(k, &k.id)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", k.id));
    }
    assert_eq!(load(Kind::ApiKey).all::<ApiKey>(), []);
    assert_eq!(load(Kind::Workflow).all::<Workflow>(), []);
    assert_eq!(load(Kind::StructuredOutput).all::<StructuredOutput>(), []);
    assert_eq!(load(Kind::Endpoint).all::<Endpoint>(), []);
    assert_eq!(load(Kind::Provider).all::<ProviderCredential>(), []);
}

/// The catalog entries of one kind, decoded as the type the test names.
struct Loaded<'a>(&'a Store, Kind);

impl Loaded<'_> {
    fn all<T: bincode::Decode<()>>(&self) -> Vec<T> {
        self.0
            .catalog_load(self.1)
            .unwrap_or_else(|e| panic!("catalog entries of kind {:?}: {e}", self.1))
    }
}

/// Opens eddy's store on `dir`, once sled has let go of it.
async fn open_store(dir: &Path) -> Store {
    eventually("the store to open", async || Store::open(dir, 8 << 20, 0)).await
}

/// Opens `dir` with sled itself (as the golden test alone may), once eddy has let go of it.
async fn open_sled(dir: &Path) -> sled::Db {
    eventually("sled to open the store", async || {
        sled::Config::new().path(dir).open()
    })
    .await
}

/// Writes the scenario through the store's API into a new store at `dir` whose `meta`
/// keys are the golden ones. The ids come from the store; `known` ids (the committed ones)
/// stand in for the random part of each channel id.
async fn write_scenario(dir: &Path, known: Option<&PublicIds>) -> PublicIds {
    {
        let db = open_sled(dir).await;
        let meta = db.open_tree("meta").unwrap();
        meta.insert("id_key", &scenario::ID_KEY[..]).unwrap();
        meta.insert("ws_token_key", &scenario::WS_TOKEN_KEY[..])
            .unwrap();
        db.flush().unwrap();
    }
    let store = open_store(dir).await;
    let mut requests: Vec<(u64, ChannelId)> = Vec::with_capacity(REQUESTS);
    for n in 0..REQUESTS {
        requests.push(match known {
            None => store.new_request_id().await.unwrap(),
            Some(ids) => (store.next_id().unwrap(), ids.requests[n].1),
        });
    }
    let records = scenario::requests(&requests);
    for (n, record) in records.iter().enumerate() {
        let mut record = record.clone();
        if n == 0 {
            let hash = eddy::secret::hash_key(scenario::IDEMPOTENCY_KEY);
            let claim = store
                .insert_request_once(&mut record, &project(), &hash, 86_400_000)
                .await;
            assert!(matches!(claim, Ok(Claim::New)), "{claim:?}");
        } else {
            store.insert_request(&mut record).await.unwrap();
        }
        for batch in scenario::timeline(n) {
            store.append_steps(record.id, &batch).await.unwrap();
        }
    }
    let mut dead_letters = Vec::new();
    for entry in &scenario::dead_letters(&records[6]) {
        dead_letters.push(store.insert_dead_letter(entry).await.unwrap());
    }
    write_catalog(&store, &scenario::catalog());
    let cursor = Cursor {
        created_ms: records[4].created_ms,
        id: records[4].id,
    };
    let cursor = store.cursor_text(cursor).unwrap();
    store.commit().await.unwrap();
    PublicIds {
        requests,
        dead_letters,
        cursor,
    }
}

/// Puts each catalog entry under the name the catalog keys it by.
fn write_catalog(store: &Store, c: &CatalogEntries) {
    let project = project();
    store
        .catalog_put(Kind::Project, &project, b"", &c.project)
        .unwrap();
    for k in &c.keys {
        store
            .catalog_put(Kind::ApiKey, &project, &k.hash, k)
            .unwrap();
    }
    for w in &c.workflows {
        store
            .catalog_put(Kind::Workflow, &project, w.name.as_bytes(), w)
            .unwrap();
    }
    for o in &c.outputs {
        let name = o.id.as_bytes();
        store
            .catalog_put(Kind::StructuredOutput, &project, name, o)
            .unwrap();
    }
    for e in &c.endpoints {
        store
            .catalog_put(Kind::Endpoint, &project, e.id.as_bytes(), e)
            .unwrap();
    }
    for p in &c.providers {
        store
            .catalog_put(Kind::Provider, &project, p.name.as_bytes(), p)
            .unwrap();
    }
}

/// Every entry of every non-empty tree of the store at `dir`.
async fn dump(dir: &Path) -> Dump {
    let db = open_sled(dir).await;
    let mut out = Dump::new();
    for name in db.tree_names() {
        let name = String::from_utf8(name.to_vec()).expect("tree names are text");
        for kv in db.open_tree(&name).unwrap().iter() {
            let (k, v) = kv.unwrap();
            out.insert((name.clone(), k.to_vec()), v.to_vec());
        }
    }
    out
}

/// Writes `dump` into a new store at `dir`, with sled itself.
async fn load(dir: &Path, dump: &Dump) {
    let db = open_sled(dir).await;
    for ((tree, key), value) in dump {
        db.open_tree(tree).unwrap().insert(key, &value[..]).unwrap();
    }
    db.flush().unwrap();
}

/// What differs between the committed store and this build's, one line per entry.
fn differences(golden: &Dump, now: &Dump) -> Vec<String> {
    let mut out = Vec::new();
    for (entry @ (tree, key), value) in golden {
        match now.get(entry) {
            None => out.push(format!("  {tree}/{}: no longer written", hex(key))),
            Some(v) if v != value => {
                let at = v.iter().zip(value).take_while(|(a, b)| a == b).count();
                out.push(format!(
                    "  {tree}/{}: {} bytes, were {}; the first change is at byte {at}",
                    hex(key),
                    v.len(),
                    value.len()
                ));
            }
            Some(_) => {}
        }
    }
    for (tree, key) in now.keys().filter(|entry| !golden.contains_key(*entry)) {
        out.push(format!("  {tree}/{}: new", hex(key)));
    }
    out
}

fn read_golden_store() -> Dump {
    let root = golden_dir().join("store");
    let mut out = Dump::new();
    let trees = std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    for tree in trees {
        let tree = tree.unwrap();
        let name = tree.file_name().into_string().expect("tree names are text");
        for entry in std::fs::read_dir(tree.path()).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_str().expect("hex names");
            let key = unhex(file).unwrap_or_else(|| panic!("{}: not hex", path.display()));
            out.insert((name.clone(), key), std::fs::read(&path).unwrap());
        }
    }
    assert!(!out.is_empty(), "{} holds the golden store", root.display());
    out
}

fn read_ids() -> PublicIds {
    let path = golden_dir().join("ids.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut ids = PublicIds {
        requests: Vec::new(),
        dead_letters: Vec::new(),
        cursor: String::new(),
    };
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        match line.split(' ').collect::<Vec<_>>()[..] {
            ["request", id, uuid] => ids.requests.push((id.parse().unwrap(), channel(uuid))),
            ["dead_letter", id] => ids.dead_letters.push(id.to_string()),
            ["cursor", cursor] => ids.cursor = cursor.to_string(),
            _ => panic!("{}: cannot read {line:?}", path.display()),
        }
    }
    assert_eq!(ids.requests.len(), REQUESTS, "{}", path.display());
    ids
}

/// Replaces the golden files with `dump` and `ids`, and the `store_record` fuzz seeds with
/// its records, timeline entries and dead letters.
fn bless(dump: &Dump, ids: &PublicIds) {
    let root = golden_dir().join("store");
    let _ = std::fs::remove_dir_all(&root);
    for ((tree, key), value) in dump {
        let dir = root.join(tree);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(hex(key)), value).unwrap();
    }
    let mut text =
        String::from("# The public ids of tests/golden/store, written with it by EDDY_BLESS=1.\n");
    for (id, channel) in &ids.requests {
        text += &format!("request {id} {}\n", channel_text(channel));
    }
    for id in &ids.dead_letters {
        text += &format!("dead_letter {id}\n");
    }
    text += &format!("cursor {}\n", ids.cursor);
    std::fs::write(golden_dir().join("ids.txt"), text).unwrap();

    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/store_record");
    let _ = std::fs::remove_dir_all(&seeds);
    std::fs::create_dir_all(&seeds).unwrap();
    for ((tree, key), value) in dump {
        match tree.as_str() {
            "requests" | "dlq" => {
                std::fs::write(seeds.join(format!("{tree}-{}.bin", hex(key))), value)
            }
            // Timeline values are frames `[len u32 LE][value]`; each value is a seed.
            "timeline" => frames(value).enumerate().try_for_each(|(i, frame)| {
                std::fs::write(seeds.join(format!("step-{}-{i}.bin", hex(key))), frame)
            }),
            _ => Ok(()),
        }
        .unwrap();
    }
}

fn frames(mut value: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, rest) = value.split_first_chunk::<4>()?;
        let (frame, rest) = rest.split_at(u32::from_le_bytes(*len) as usize);
        value = rest;
        Some(frame)
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

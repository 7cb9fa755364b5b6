//! Unit tests of store internals; behaviour tests are in `node/tests/store_*.rs`.

use super::*;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

#[tokio::test]
async fn journal_is_compacted_on_open_and_torn_tail_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(4 * 65536, 1);
    let blob = Digest::of(&bytes);
    let map = ChunkMap::from_bytes(&bytes, ChunkSize::MIN);
    {
        let store = Store::open(dir.path().to_path_buf(), StoreConfig::default())
            .await
            .unwrap();
        store.put_chunk_map(blob, &map).await.unwrap();
        for i in [0u32, 2] {
            let r = map.chunk_range(i).unwrap();
            store
                .write_chunk(
                    blob,
                    i,
                    Bytes::copy_from_slice(&bytes[r.start as usize..r.end as usize]),
                )
                .await
                .unwrap();
        }
    }
    let jpath = dir
        .path()
        .join("partial")
        .join(blob.to_hex())
        .join("journal");
    // Append half a record: a crash mid-append.
    let half = &Record::Verified(vec![1]).encode()[..7];
    let mut raw = fs::read(&jpath).unwrap();
    raw.extend_from_slice(half);
    fs::write(&jpath, &raw).unwrap();
    let store = Store::open(dir.path().to_path_buf(), StoreConfig::default())
        .await
        .unwrap();
    let bits = store.bitfield(&blob).unwrap();
    assert_eq!(bits.iter_ones().collect::<Vec<_>>(), vec![0, 2]);
    let (recs, valid) = journal::replay(&fs::read(&jpath).unwrap());
    assert_eq!(
        valid,
        fs::metadata(&jpath).unwrap().len() as usize,
        "torn tail removed"
    );
    assert_eq!(
        recs.len(),
        2,
        "one digests run and one verified record: {recs:?}"
    );
    assert_eq!(store.chunk_map(&blob).as_deref(), Some(&map));
}

/// Compile-time check: every async method's future is `Send`, so callers
/// can `tokio::spawn` them (the swarm's `ChunkStore` trait requires it).
#[allow(dead_code)]
fn futures_are_send(s: Store, d: Digest, map: ChunkMap) {
    fn send<T: Send>(_: T) {}
    send(Store::open(PathBuf::new(), StoreConfig::default()));
    send(s.create_blob(d, 1, ChunkSize::MIN));
    send(s.add_chunk_digests(d, 0, &[]));
    send(s.put_chunk_map(d, &map));
    send(s.write_chunk(d, 0, Bytes::new()));
    send(s.read_chunk(d, 0));
    send(s.put_blob(d, Bytes::new()));
    send(s.pin("x", &[]));
    send(s.unpin("x"));
    send(s.gc());
    send(s.flush());
    send(s.reader(d));
    send(s.clone());
}

//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the same target bodies the
//! libFuzzer binaries run, so every input that ever found something stays a regression test
//! without nightly. A missing corpus directory fails: an empty replay would prove nothing.

#[path = "../fuzz/targets.rs"]
mod targets;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut n = 0;
    for entry in entries {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("read corpus file");
        // A panic names the file that caused it.
        let r = std::panic::catch_unwind(|| run(&data));
        assert!(r.is_ok(), "{target}: {} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "{target}: empty corpus");
    println!("{target}: {n} inputs replayed");
}

#[test]
fn packets_corpus() {
    replay("packets", targets::packets);
}

#[test]
fn topics_corpus() {
    replay("topics", targets::topics);
}

#[test]
fn payloads_corpus() {
    replay("payloads", targets::payloads);
}

//! The filesystem mounted for real: files written through the kernel keep exactly what was
//! synced across a power cut.

use chatmq_lazyfs::{Cut, LazyFs};
use std::io::Write;

#[test]
fn a_power_cut_keeps_synced_data_and_drops_the_rest() {
    if chatmq_lazyfs::skip_without_fuse() {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let fs = LazyFs::new();
    let mut m = fs.mount(dir.path()).expect("mount");
    let synced = m.path().join("synced");
    let lazy = m.path().join("lazy");
    {
        let mut f = std::fs::File::create(&synced).expect("create");
        f.write_all(b"kept").expect("write");
        f.sync_data().expect("fdatasync");
        f.write_all(b" and lost").expect("write");
        let mut g = std::fs::File::create(&lazy).expect("create");
        g.write_all(b"lost").expect("write");
        assert_eq!(std::fs::read(&synced).expect("read"), b"kept and lost");
    }
    let report = m.power_cut(Cut::Clean).expect("cut");
    assert_eq!(std::fs::read(&synced).expect("read"), b"kept");
    assert_eq!(std::fs::read(&lazy).expect("read"), b"");
    assert_eq!((report.files_rolled_back, report.bytes_lost), (2, 13));
    // Written and synced after the cut: kept by the next one.
    std::fs::write(&lazy, b"now synced").expect("write");
    std::fs::File::open(&lazy)
        .and_then(|f| f.sync_all())
        .expect("fsync");
    m.power_cut(Cut::Clean).expect("cut");
    assert_eq!(std::fs::read(&lazy).expect("read"), b"now synced");
}

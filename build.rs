//! `cfg(chatmq_scylla_nodes)` when `CHATMQ_SCYLLA_NODES` is set at build time: the ScyllaDB
//! backend tests then run; without it they are reported as ignored (with the reason), never
//! as passed.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(chatmq_scylla_nodes)");
    println!("cargo::rerun-if-env-changed=CHATMQ_SCYLLA_NODES");
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("CHATMQ_SCYLLA_NODES").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=chatmq_scylla_nodes");
    }
}

//! Connecting: the session and its execution profile, the keyspace and schema, TLS.

use super::*;

impl ScyllaStore {
    /// Connects, creates the keyspace and applies `schema/scylla.cql` (idempotently),
    /// records the schema version and prepares every statement.
    pub async fn connect(cfg: &ScyllaConfig) -> StoreResult<ScyllaStore> {
        cfg.validate()
            .map_err(|e| StoreError::new(StoreErrorKind::Internal, e))?;
        if !cfg.consistency.is_quorum_or_stronger() {
            tracing::warn!(
                consistency = ?cfg.consistency,
                "ScyllaDB consistency below quorum: after a restart the seq allocator may not \
                 see the latest messages on a multi-replica cluster"
            );
        }
        let timeout = Duration::from_millis(cfg.request_timeout_ms);
        let mut lb = DefaultPolicy::builder().token_aware(true);
        if let Some(dc) = &cfg.local_datacenter {
            lb = lb.prefer_datacenter(dc.clone()).permit_dc_failover(false);
        }
        let profile = ExecutionProfile::builder()
            .consistency(driver_consistency(cfg.consistency))
            .serial_consistency(Some(SerialConsistency::LocalSerial))
            .request_timeout(Some(timeout))
            .load_balancing_policy(lb.build())
            .retry_policy(Arc::new(DefaultRetryPolicy::new()))
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&cfg.nodes)
            .connection_timeout(timeout)
            .default_execution_profile_handle(profile.into_handle())
            .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()));
        if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
            builder = builder.user(user, password);
        }
        if let Some(tls) = &cfg.tls {
            builder = with_tls(builder, tls).await?;
        }
        let session = builder.build().await.ctx("connect to ScyllaDB")?;

        // DDL is not on the data path: it runs unprepared, once, at startup.
        let create_keyspace = format!(
            "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {} AND durable_writes = true",
            cfg.keyspace,
            cfg.replication.to_cql()
        );
        session
            .query_unpaged(create_keyspace, ())
            .await
            .ctx("create keyspace")?;
        session
            .use_keyspace(&cfg.keyspace, false)
            .await
            .ctx("use keyspace")?;
        for stmt in statements::schema_statements() {
            session
                .query_unpaged(stmt.as_str(), ())
                .await
                .ctx("apply schema/scylla.cql")?;
        }
        session
            .await_schema_agreement()
            .await
            .ctx("schema agreement")?;
        let st = Prepared::prepare(&session)
            .await
            .ctx("prepare statements")?;
        let store = ScyllaStore {
            session,
            st,
            bucket_size: cfg.bucket_size,
            // Validated to fit (at most 20 years).
            dedup_ttl: i32::try_from(cfg.dedup_ttl_secs).unwrap_or(i32::MAX),
            seqs: LockMap::new(SEQ_SLOTS),
            group_locks: LockMap::new(SEQ_SLOTS),
            closed: AtomicBool::new(false),
        };
        store.check_schema_version().await?;
        Ok(store)
    }

    /// Refuses a keyspace written by a newer schema or with another bucket size (which would
    /// make every existing message unreachable), and records ours.
    pub(super) async fn check_schema_version(&self) -> StoreResult<()> {
        let found: Option<(Option<i32>, Option<i64>)> = self
            .maybe_row(
                &self.st.SELECT_SCHEMA_VERSION,
                (statements::SCHEMA_COMPONENT,),
                "read schema version",
            )
            .await?;
        let bucket_size = counter_to_db(self.bucket_size)?;
        if let Some((version, stored_bucket_size)) = found {
            let version = version.unwrap_or(0);
            if version > statements::SCHEMA_VERSION {
                return Err(StoreError::new(
                    StoreErrorKind::Internal,
                    format!(
                        "keyspace has schema version {version}, newer than this broker's {}",
                        statements::SCHEMA_VERSION
                    ),
                ));
            }
            if let Some(stored) = stored_bucket_size {
                if stored != bucket_size {
                    return Err(StoreError::new(
                        StoreErrorKind::Internal,
                        format!(
                            "store.bucket_size = {bucket_size}, but the keyspace was written \
                             with {stored}; it cannot change once messages exist"
                        ),
                    ));
                }
            }
            if version == statements::SCHEMA_VERSION && stored_bucket_size.is_some() {
                return Ok(());
            }
        }
        self.exec(
            &self.st.INSERT_SCHEMA_VERSION,
            (
                statements::SCHEMA_COMPONENT,
                statements::SCHEMA_VERSION,
                bucket_size,
                now_ms(),
            ),
            "record schema version",
        )
        .await
        .map(drop)
    }
}

pub(super) fn driver_consistency(c: ConsistencyLevel) -> Consistency {
    match c {
        ConsistencyLevel::One => Consistency::One,
        ConsistencyLevel::LocalOne => Consistency::LocalOne,
        ConsistencyLevel::Quorum => Consistency::Quorum,
        ConsistencyLevel::LocalQuorum => Consistency::LocalQuorum,
        ConsistencyLevel::EachQuorum => Consistency::EachQuorum,
        ConsistencyLevel::All => Consistency::All,
    }
}

#[cfg(feature = "scylla-tls")]
pub(super) async fn with_tls(
    builder: SessionBuilder,
    tls: &ScyllaTls,
) -> StoreResult<SessionBuilder> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::new(StoreErrorKind::Internal, format!("store.tls.{what}: {e}"))
    };
    let read = |path: std::path::PathBuf, what: &'static str| async move {
        tokio::fs::read(&path)
            .await
            .map_err(|e| bad(what, &format!("{}: {e}", path.display())))
    };
    let ca = read(tls.ca_file.clone(), "ca_file").await?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        let cert = cert.map_err(|e| bad("ca_file", &e))?;
        roots.add(cert).map_err(|e| bad("ca_file", &e))?;
    }
    if roots.is_empty() {
        return Err(bad("ca_file", &"no certificate in the file"));
    }
    // An explicit provider: the driver's rustls dependency also enables aws-lc-rs, and with
    // two providers compiled in rustls cannot pick a default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("ca_file", &e))?
        .with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let certs = read(cert_file.clone(), "cert_file").await?;
            let certs = CertificateDer::pem_slice_iter(&certs)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("cert_file", &e))?;
            let key = read(key_file.clone(), "key_file").await?;
            let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| match e {
                pem::Error::NoItemsFound => bad("key_file", &"no private key in the file"),
                e => bad("key_file", &e),
            })?;
            config
                .with_client_auth_cert(certs, key)
                .map_err(|e| bad("cert_file", &e))?
        }
        _ => config.with_no_client_auth(),
    };
    Ok(builder.tls_context(Some(Arc::new(config))))
}

#[cfg(not(feature = "scylla-tls"))]
pub(super) async fn with_tls(
    _builder: SessionBuilder,
    _tls: &ScyllaTls,
) -> StoreResult<SessionBuilder> {
    // `validate` already refused this; kept as a guard.
    Err(StoreError::new(
        StoreErrorKind::Internal,
        "store.tls: this build has no TLS for ScyllaDB; rebuild with `--features scylla-tls`",
    ))
}

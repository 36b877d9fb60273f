//! TLS between the coordinator and its workers: a worker serving a certificate signed by the
//! scenario's authority gives the local run's results; a coordinator that does not trust it,
//! or does not speak TLS, is refused.

use std::path::Path;

use super::{cookie_file, free_port, run_with, worker_at, workers_override, ONE_AT_A_TIME};
use crate::util::{run, scenario, SMALL};

/// A certificate authority and a worker certificate for `name` signed by it, as PEM files in
/// `dir`: (ca.pem, cert.pem, key.pem).
fn certificates(dir: &Path, name: &str) -> [std::path::PathBuf; 3] {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    let paths = ["ca.pem", "cert.pem", "key.pem"].map(|f| dir.join(f));
    std::fs::write(&paths[0], ca_cert.pem()).unwrap();
    std::fs::write(&paths[1], cert.pem()).unwrap();
    std::fs::write(&paths[2], key.serialize_pem()).unwrap();
    paths
}

#[test]
fn a_tls_worker_gives_the_local_results_and_refuses_plain_or_untrusted_coordinators() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cookie = cookie_file(tmp.path(), "cookie", "a-long-shared-secret-for-tests");
    let [ca, cert, key] = certificates(tmp.path(), "fedsim-worker");
    let addr = format!("127.0.0.1:{}", free_port());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let _w = worker_at(&addr, &cookie, 1, &["--tls-cert", cert, "--tls-key", key]);
    let addrs = [addr.clone()];
    let over = |tls: serde_json::Value| {
        let workers = workers_override(&addrs, &cookie, tls);
        scenario(SMALL, &["rounds=2", "slots.count=0", &workers]).unwrap()
    };
    let trusted = serde_json::json!({"tls": {"ca": ca, "server_name": "fedsim-worker"}});
    let dir = tmp.path().join("tls");
    let report = run_with(&over(trusted), &dir, None).expect("the run over TLS succeeds");
    assert_eq!(report.summary.rounds_completed, 2);
    assert!(report.summary.workers[0].jobs > 0);
    let local = run(
        &scenario(SMALL, &["rounds=2"]).unwrap(),
        &tmp.path().join("local"),
    );
    let adapter = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert_eq!(adapter(&dir), adapter(&local.dir));

    // Plain TCP to a TLS worker: no authenticated session.
    let err = match run_with(
        &over(serde_json::json!({})),
        &tmp.path().join("plain"),
        None,
    ) {
        Ok(_) => panic!("a plain coordinator used a TLS worker"),
        Err(e) => fedsim::fmt::chain(&e),
    };
    assert!(err.contains(&addr) && err.contains("TLS"), "{err}");
    // The right authority, the wrong name: the certificate is not accepted.
    let wrong = serde_json::json!({"tls": {"ca": ca, "server_name": "someone-else"}});
    let err = match run_with(&over(wrong), &tmp.path().join("wrong"), None) {
        Ok(_) => panic!("a worker with another name was trusted"),
        Err(e) => fedsim::fmt::chain(&e),
    };
    assert!(err.contains(&addr), "{err}");
}

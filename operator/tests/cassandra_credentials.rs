//! A managed Cassandra's generated credentials, proven against the environment's real servers:
//!
//! - the credentials Job's script, [`CASSANDRA_CREDENTIALS_SCRIPT`] exactly as the Job runs it,
//!   with PyPI's `cqlsh` (the release the Cassandra image ships) against the real Cassandra: the
//!   application role logs in with its password, can do what the gateway does, is no superuser,
//!   and the superuser answers only to its new password; a second run succeeds and repairs a
//!   drifted role password. It runs as a throwaway superuser of its own, never the shared
//!   `cassandra` the other tests log in as, with a role and keyspaces of its own; the one shared
//!   thing it changes, `system_auth`'s replication, is put back.
//! - the dereference step against the real API server: passwords generated once, then read back;
//!   and the Job as the API server takes it: admitted under the restricted Pod Security Standard,
//!   re-applied without a write, its immutable template the reason a changed Job gets a new name.
//!
//! Needs `cargo xtask env up` (Cassandra and kube). `cqlsh` is installed on first use into
//! `~/.cache/order-pipeline/cqlsh-<version>` with the machine's `python3` and pip.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use order_pipeline_operator::controller::build::{
    self, CASSANDRA_CREDENTIALS_SCRIPT, CASSANDRA_ROLE, MANAGER, ReplicaOverrides,
};
use order_pipeline_operator::controller::cache::Reader;
use order_pipeline_operator::controller::dereference::{self, Dereferenced, Running, Secrets};
use order_pipeline_operator::controller::validate;
use pipeline_api::OrderPipeline;
use rand::distr::{Alphanumeric, SampleString};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use serde_json::json;
use support::TestNamespace;

/// The cqlsh of Cassandra 5.0, which the image's `bin/cqlsh` is.
const CQLSH_VERSION: &str = "6.2.0";
/// Cassandra caches credentials this long (`credentials_validity`), so an old password keeps
/// working for up to this after a change.
const CREDENTIALS_CACHE: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credentials_script_sets_up_roles_on_the_real_cassandra_and_runs_again() {
    let env = testenv::Env::load();
    let cqlsh = tokio::task::spawn_blocking(ensure_cqlsh)
        .await
        .unwrap()
        .expect("cqlsh from PyPI");
    let address = env.require("OP_CASSANDRA_ADDR");
    let admin = login(
        &address,
        &env.require("OP_CASSANDRA_USER"),
        &env.require("OP_CASSANDRA_PASSWORD"),
    )
    .await
    .expect("log in as the environment's superuser");
    let id = testenv::unique("cc").replace('-', "_");
    let names = Names {
        superuser: format!("su_{id}"),
        role: format!("app_{id}"),
        new_keyspace: format!("new_{id}"),
        existing_keyspace: format!("old_{id}"),
    };
    let replication = system_auth_replication(&admin).await.unwrap();
    let outcome = credentials_scenario(&admin, &address, &cqlsh, &names).await;
    // Whatever happened, leave the shared Cassandra as it was.
    for statement in [
        format!("DROP KEYSPACE IF EXISTS {}", names.new_keyspace),
        format!("DROP KEYSPACE IF EXISTS {}", names.existing_keyspace),
        format!("DROP ROLE IF EXISTS '{}'", names.role),
        format!("DROP ROLE IF EXISTS '{}'", names.superuser),
        format!("ALTER KEYSPACE system_auth WITH replication = {replication}"),
    ] {
        if let Err(error) = admin.query_unpaged(statement.as_str(), &[]).await {
            eprintln!("cleanup `{statement}` failed: {error}");
        }
    }
    outcome.unwrap();
}

struct Names {
    superuser: String,
    role: String,
    /// Created by the role itself, as the gateway does on a new cluster.
    new_keyspace: String,
    /// Created by a superuser before the role existed, as on a pipeline from before this role.
    existing_keyspace: String,
}

async fn credentials_scenario(
    admin: &Session,
    address: &str,
    cqlsh: &Path,
    names: &Names,
) -> Result<()> {
    let (host, port) = address
        .rsplit_once(':')
        .context("OP_CASSANDRA_ADDR is host:port")?;
    let default_password = password();
    let superuser_password = password();
    let role_password = password();
    admin
        .query_unpaged(
            format!(
                "CREATE ROLE '{}' WITH PASSWORD = '{default_password}' AND SUPERUSER = true AND LOGIN = true",
                names.superuser
            ),
            &[],
        )
        .await?;
    let script = Script {
        cqlsh,
        variables: vec![
            ("CASSANDRA_HOST", host.to_owned()),
            ("CASSANDRA_PORT", port.to_owned()),
            ("SUPERUSER_NAME", names.superuser.clone()),
            ("DEFAULT_SUPERUSER_PASSWORD", default_password.clone()),
            ("SUPERUSER_PASSWORD", superuser_password.clone()),
            ("APP_ROLE", names.role.clone()),
            ("APP_PASSWORD", role_password.clone()),
            ("AUTH_REPLICATION_FACTOR", "1".to_owned()),
            ("CONNECT_ATTEMPTS", "5".to_owned()),
            ("CONNECT_DELAY_SECONDS", "2".to_owned()),
        ],
        secrets: vec![
            default_password.clone(),
            superuser_password.clone(),
            role_password.clone(),
        ],
    };

    // First run: a new superuser (default password), no role, no keyspace.
    let log = script.run(&names.new_keyspace).await?;
    ensure!(
        log.contains("logged in with the default superuser password"),
        "{log}"
    );
    ensure!(log.contains("does not exist yet"), "{log}");

    // The role logs in with the Secret's password and does what the gateway does, in a keyspace
    // it creates itself.
    let app = login(address, &names.role, &role_password).await?;
    gateway_statements(&app, &names.new_keyspace).await?;
    // It is no superuser and cannot manage roles.
    let (superuser, can_login): (bool, bool) = admin
        .query_unpaged(
            "SELECT is_superuser, can_login FROM system_auth.roles WHERE role = ?",
            (&names.role,),
        )
        .await?
        .into_rows_result()?
        .single_row()?;
    ensure!(
        !superuser && can_login,
        "{} must be a login role, not a superuser",
        names.role
    );
    ensure!(
        app.query_unpaged(format!("CREATE ROLE '{}_x'", names.role), &[])
            .await
            .is_err(),
        "the application role may create roles"
    );
    // system_auth is replicated by datacenter now.
    let replication = system_auth_replication(admin).await?;
    ensure!(
        replication.contains("NetworkTopologyStrategy")
            && replication.contains("'datacenter1': '1'"),
        "system_auth: {replication}"
    );
    // The superuser answers to its new password only, once the old one has left the cache.
    let deadline = Instant::now() + CREDENTIALS_CACHE * 5;
    while login(address, &names.superuser, &superuser_password)
        .await
        .is_err()
        || login(address, &names.superuser, &default_password)
            .await
            .is_ok()
    {
        ensure!(
            Instant::now() < deadline,
            "the superuser still refuses its new password or accepts the default one"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Second run, after someone changed the role's password by hand, for a keyspace a superuser
    // created before the role existed: it logs in with the new superuser password, resets the
    // role's password to the Secret's and grants the keyspace's data.
    retry_rate_limited(|| {
        admin.query_unpaged(
            format!("ALTER ROLE '{}' WITH PASSWORD = 'drifted'", names.role),
            &[],
        )
    })
    .await?;
    admin
        .query_unpaged(
            format!(
                "CREATE KEYSPACE {} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}",
                names.existing_keyspace
            ),
            &[],
        )
        .await?;
    admin
        .query_unpaged(
            format!(
                "CREATE TABLE {}.users (email text PRIMARY KEY, password_hash text)",
                names.existing_keyspace
            ),
            &[],
        )
        .await?;
    tokio::time::sleep(CREDENTIALS_CACHE + Duration::from_millis(500)).await;
    let log = script.run(&names.existing_keyspace).await?;
    ensure!(
        log.contains("logged in with the generated superuser password"),
        "{log}"
    );
    ensure!(log.contains("has the generated password already"), "{log}");
    ensure!(
        log.contains("the password from the Secret\n"),
        "the drifted password is reset: {log}"
    );
    ensure!(
        log.contains(&format!("may write keyspace {}", names.existing_keyspace)),
        "{log}"
    );
    tokio::time::sleep(CREDENTIALS_CACHE + Duration::from_millis(500)).await;
    let app = login(address, &names.role, &role_password).await?;
    gateway_statements(&app, &names.existing_keyspace).await?;
    gateway_statements(&app, &names.new_keyspace).await?;
    ensure!(
        login(address, &names.role, "drifted").await.is_err(),
        "the drifted password still works"
    );
    Ok(())
}

/// The script as the Job runs it (`bash -c <script>`), with the test's parameters and cqlsh.
struct Script<'a> {
    cqlsh: &'a Path,
    variables: Vec<(&'static str, String)>,
    /// Must never appear in the output.
    secrets: Vec<String>,
}

impl Script<'_> {
    async fn run(&self, keyspace: &str) -> Result<String> {
        let home = std::env::temp_dir().join(testenv::unique("cqlsh-home"));
        std::fs::create_dir_all(&home)?;
        let path = format!(
            "{}:{}",
            self.cqlsh
                .parent()
                .context("cqlsh has a directory")?
                .display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(CASSANDRA_CREDENTIALS_SCRIPT)
            .env("PATH", path)
            .env("HOME", &home)
            .env("APP_KEYSPACE", keyspace)
            .envs(self.variables.iter().map(|(name, value)| (*name, value)))
            .stdin(Stdio::null());
        let started = Instant::now();
        let output = tokio::task::spawn_blocking(move || command.output()).await??;
        let _ = std::fs::remove_dir_all(&home);
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!(
            "--- the credentials script ({:.1} s, {}) ---\n{log}",
            started.elapsed().as_secs_f64(),
            output.status
        );
        for secret in &self.secrets {
            ensure!(
                !log.contains(secret.as_str()),
                "a password is in the script's output"
            );
        }
        ensure!(
            output.status.success(),
            "the script failed: {}",
            output.status
        );
        Ok(log)
    }
}

/// What the gateway does with its keyspace (`workloads/gateway/src/users.rs`): create it and
/// its table when missing, then register, read and delete an account with lightweight
/// transactions.
async fn gateway_statements(session: &Session, keyspace: &str) -> Result<()> {
    for statement in [
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
             {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.users (email text PRIMARY KEY, password_hash text)"
        ),
    ] {
        session
            .query_unpaged(statement.as_str(), &[])
            .await
            .with_context(|| format!("`{statement}` in {keyspace}"))?;
    }
    session.await_schema_agreement().await?;
    let email = "someone@example.com";
    let (applied,): (bool,) = session
        .query_unpaged(
            format!(
                "INSERT INTO {keyspace}.users (email, password_hash) VALUES (?, ?) IF NOT EXISTS"
            ),
            (email, "hash"),
        )
        .await
        .with_context(|| format!("register in {keyspace}"))?
        .into_rows_result()?
        .first_row()?;
    ensure!(applied, "the registration in {keyspace} did not apply");
    let (hash,): (String,) = session
        .query_unpaged(
            format!("SELECT password_hash FROM {keyspace}.users WHERE email = ?"),
            (email,),
        )
        .await
        .with_context(|| format!("read from {keyspace}"))?
        .into_rows_result()?
        .single_row()?;
    ensure!(hash == "hash");
    session
        .query_unpaged(
            format!("DELETE FROM {keyspace}.users WHERE email = ? IF EXISTS"),
            (email,),
        )
        .await
        .with_context(|| format!("delete from {keyspace}"))?;
    Ok(())
}

async fn login(address: &str, user: &str, password: &str) -> Result<Session> {
    Ok(SessionBuilder::new()
        .known_node(address)
        .user(user, password)
        .build()
        .await?)
}

/// `system_auth`'s replication as a CQL map literal, to put it back afterwards.
async fn system_auth_replication(session: &Session) -> Result<String> {
    let (replication,): (std::collections::BTreeMap<String, String>,) = session
        .query_unpaged(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = 'system_auth'",
            &[],
        )
        .await?
        .into_rows_result()?
        .single_row()?;
    let entries: Vec<String> = replication
        .iter()
        .map(|(key, value)| format!("'{key}': '{value}'"))
        .collect();
    Ok(format!("{{{}}}", entries.join(", ")))
}

/// Cassandra refuses a role's password change within 5 s of the last one.
async fn retry_rate_limited<F, Fut, T, E>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if error.to_string().contains("can only be changed every") => {
                ensure!(Instant::now() < deadline, "still rate-limited: {error}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => bail!("{error}"),
        }
    }
}

fn password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 24)
}

/// `cqlsh` of [`CQLSH_VERSION`] in a virtualenv under the environment's home, installed from PyPI
/// when missing (once: a lock keeps concurrent test runs from installing it twice).
fn ensure_cqlsh() -> Result<PathBuf> {
    let home = testenv::Env::default_path()
        .parent()
        .and_then(Path::parent)
        .context("the env file lies in <home>/run")?
        .to_owned();
    let dir = home.join(format!("cqlsh-{CQLSH_VERSION}"));
    let cqlsh = dir.join("bin/cqlsh");
    let complete = dir.join(".complete");
    if complete.is_file() {
        return Ok(cqlsh);
    }
    std::fs::create_dir_all(&home)?;
    let lock = std::fs::File::create(home.join(format!("cqlsh-{CQLSH_VERSION}.lock")))?;
    lock.lock()?;
    if complete.is_file() {
        return Ok(cqlsh);
    }
    eprintln!(
        "installing cqlsh {CQLSH_VERSION} from PyPI into {}",
        dir.display()
    );
    if dir.exists() {
        // An interrupted install.
        std::fs::remove_dir_all(&dir)?;
    }
    let run = |program: &Path, args: &[&str]| -> Result<()> {
        eprintln!("  {} {}", program.display(), args.join(" "));
        let status = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("cannot start {}", program.display()))?;
        ensure!(
            status.success(),
            "{} {} failed: {status}",
            program.display(),
            args.join(" ")
        );
        Ok(())
    };
    let venv = dir.to_str().context("UTF-8 path")?;
    run(Path::new("python3"), &["-m", "venv", venv])
        .context("python3 with its venv module is needed (Debian: python3-venv)")?;
    run(
        &dir.join("bin/pip"),
        &[
            "install",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            &format!("cqlsh=={CQLSH_VERSION}"),
        ],
    )?;
    ensure!(cqlsh.is_file(), "pip installed no {}", cqlsh.display());
    std::fs::write(&complete, format!("cqlsh {CQLSH_VERSION}\n"))?;
    eprintln!("cqlsh {CQLSH_VERSION} installed");
    Ok(cqlsh)
}

/// A paused pipeline (no operator acts on it) in a namespace of its own that enforces the
/// restricted Pod Security Standard.
async fn paused_pipeline(test: &TestNamespace) -> OrderPipeline {
    let pipelines: Api<OrderPipeline> = test.api();
    let pipeline: OrderPipeline = serde_json::from_value(json!({
        "apiVersion": "orderpipeline.dev/v1alpha1",
        "kind": "OrderPipeline",
        "metadata": {"name": "shop"},
        "spec": {"paused": true},
    }))
    .unwrap();
    pipelines
        .create(&PostParams::default(), &pipeline)
        .await
        .unwrap()
}

async fn apply<K>(api: &Api<K>, object: &K) -> kube::Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.patch(
        &object.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_generated_once_and_the_job_applies_as_the_api_server_allows() {
    let test = TestNamespace::create_labelled(
        "opcc",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await;
    let client = test.admin.clone();
    let pipeline = paused_pipeline(&test).await;
    let namespace = pipeline.namespace().unwrap();
    // The operator's steps run as the Helm chart's ServiceAccount, so the chart's RBAC is what
    // allows them; the test's own reads use the admin client.
    let (operator_client, _) = test.chart_identity().await;
    let secrets_api: Api<Secret> = Api::namespaced(operator_client.clone(), &namespace);
    let jobs: Api<Job> = Api::namespaced(operator_client.clone(), &namespace);
    let admin_jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    // Reads as a reconcile without the controller's caches does: from the API server.
    let reader = Reader::new(operator_client.clone(), None);
    let build = |secrets: &Secrets, running: Option<&str>| {
        let found = Dereferenced {
            secrets: secrets.clone(),
            running: running
                .map(|image| {
                    let running = Running {
                        image: Some(image.to_owned()),
                        replicas: None,
                    };
                    (build::Dependency::Cassandra, running)
                })
                .into_iter()
                .collect(),
            replicas: Default::default(),
        };
        let valid = validate::validate(&pipeline, found, &Default::default()).unwrap();
        build::build(
            &valid,
            &ReplicaOverrides::new(),
            &Default::default(),
            "0.1.0",
        )
    };

    // Generated on the first pass, then read back from the Secret the build writes.
    let first = dereference::secrets(&pipeline, &reader).await.unwrap();
    let (password, superuser) = (
        first.cassandra_password.clone().unwrap(),
        first.cassandra_superuser_password.clone().unwrap(),
    );
    assert_eq!(password.len(), 32);
    assert_ne!(password, superuser);
    let children = build(&first, None);
    let credentials = children
        .secrets
        .iter()
        .find(|secret| secret.name_any() == "shop-cassandra-credentials")
        .unwrap();
    apply(&secrets_api, credentials).await.unwrap();
    let again = dereference::secrets(&pipeline, &reader).await.unwrap();
    assert_eq!(again.cassandra_password.as_ref(), Some(&password));
    assert_eq!(
        again.cassandra_superuser_password.as_ref(),
        Some(&superuser)
    );

    // A Secret from before the application role (the image's cassandra/cassandra), as an older
    // operator wrote it (owned by the pipeline), gets a new role password; the superuser
    // password it lacked is generated. The test replaces it as an administrator: the operator
    // itself may not delete Secrets.
    let admin_secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    admin_secrets
        .delete("shop-cassandra-credentials", &DeleteParams::default())
        .await
        .unwrap();
    let older: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": "shop-cassandra-credentials",
            "ownerReferences": [pipeline.controller_owner_ref(&()).unwrap()],
        },
        "stringData": {"username": "cassandra", "password": "cassandra"},
    }))
    .unwrap();
    admin_secrets
        .create(&PostParams::default(), &older)
        .await
        .unwrap();
    let upgraded = dereference::secrets(&pipeline, &reader).await.unwrap();
    let upgraded_password = upgraded.cassandra_password.clone().unwrap();
    assert_ne!(upgraded_password, "cassandra");
    assert_eq!(upgraded_password.len(), 32);
    let children = build(&upgraded, None);
    let credentials = children
        .secrets
        .iter()
        .find(|secret| secret.name_any() == "shop-cassandra-credentials")
        .unwrap();
    let written = apply(&secrets_api, credentials)
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(written["username"].0, CASSANDRA_ROLE.as_bytes());
    assert_eq!(written["password"].0, upgraded_password.as_bytes());

    // The Job: admitted, its pod too (the namespace enforces the restricted standard), and a
    // second apply writes nothing.
    let job = &children.jobs[0];
    let created = apply(&jobs, job).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let selector = format!("batch.kubernetes.io/job-name={}", job.name_any());
    let deadline = Instant::now() + Duration::from_secs(60);
    while pods
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the Job's pod was not created (Pod Security?); Job status: {:?}",
            admin_jobs.get(&job.name_any()).await.unwrap().status
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ours = |job: &Job| {
        job.managed_fields()
            .iter()
            .filter(|entry| entry.manager.as_deref() == Some(MANAGER))
            .map(|entry| format!("{:?}", entry.time))
            .collect::<Vec<_>>()
    };
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reapplied = apply(&jobs, job).await.unwrap();
    assert_eq!(reapplied.metadata.generation, created.metadata.generation);
    assert_eq!(ours(&reapplied), ours(&created), "a re-apply wrote the Job");

    // Another image changes the template, which a Job cannot take under the same name: hence the
    // hash in the name, which makes it a second Job.
    let mut changed = build(&upgraded, Some("cassandra:5.0.1")).jobs[0].clone();
    assert_ne!(changed.name_any(), job.name_any());
    let renamed = changed.clone();
    changed.metadata.name = job.metadata.name.clone();
    let refused = apply(&jobs, &changed).await.unwrap_err();
    assert!(
        refused.to_string().contains("immutable"),
        "a changed template under the old name: {refused}"
    );
    apply(&jobs, &renamed).await.unwrap();
}

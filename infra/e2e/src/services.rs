//! The real binaries as child processes: [`Gateway`], [`Worker`], and [`Stack`] (a Redis
//! with gateways and workers around it).

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::fault_proxy::FaultProxy;
use crate::http::Http;
use crate::process::{confab_binary, free_port, next_seq, ChildProc};
use crate::redis_server::{Mode, Redis};

/// How long a process may take to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERMed process may take to exit.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

fn owned_env(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn base_env(redis: &Redis) -> Vec<(String, String)> {
    let mut env = redis.env();
    env.extend([
        (
            "RUST_LOG".into(),
            std::env::var("CONFAB_E2E_LOG").unwrap_or_else(|_| "info".into()),
        ),
        ("NO_COLOR".into(), "1".into()),
        // Every test client is on 127.0.0.0/8 and many tests send bursts without a session:
        // the anonymous write rate is off unless a test sets it (authz.rs does).
        ("ANON_WRITES_PER_SEC_PER_ADDR".into(), "0".into()),
    ]);
    if let Ok(p) = std::env::var("CONFAB_E2E_PARTITIONS") {
        env.push(("STREAM_PARTITIONS".into(), p));
    }
    env
}

/// A `gateway` process on its own port.
pub struct Gateway {
    port: u16,
    id: String,
    env: Vec<(String, String)>,
    proc: ChildProc,
    restarts: u32,
}

impl Gateway {
    /// Starts a gateway on a free port with `env` overrides (e.g. `("REQUEST_TIMEOUT_MS",
    /// "500")`) and waits until `GET /readyz` answers 200 with its id.
    pub async fn start(redis: &Redis, env: &[(&str, &str)]) -> Gateway {
        let port = free_port();
        let id = format!("e2e-gw-{}", next_seq());
        let mut all = base_env(redis);
        all.extend([
            ("GATEWAY_ADDR".to_string(), format!("127.0.0.1:{port}")),
            ("GATEWAY_ID".to_string(), id.clone()),
            (
                "WEB_DIR".to_string(),
                "/nonexistent/confab-e2e-web".to_string(),
            ),
        ]);
        all.extend(owned_env(env));
        let proc = ChildProc::spawn(&id, &confab_binary("gateway"), &[], &all);
        let mut gw = Gateway {
            port,
            id,
            env: all,
            proc,
            restarts: 0,
        };
        gw.wait_ready().await;
        gw
    }

    async fn wait_ready(&mut self) {
        let http = self.http();
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        while start.elapsed() < START_TIMEOUT {
            if let Some(status) = self.proc.exited() {
                panic!(
                    "gateway {} exited with {status} before becoming ready",
                    self.id
                );
            }
            match http
                .try_send(http.request(reqwest::Method::GET, "/readyz"))
                .await
            {
                Ok((200, body)) if body["gatewayId"] == self.id.as_str() => return,
                Ok((200, body)) => panic!(
                    "port {} is served by another gateway ({body}); expected {}",
                    self.port, self.id
                ),
                Ok((status, body)) => last = format!("{status} {body}"),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "gateway {} not ready within {START_TIMEOUT:?}: {last}",
            self.id
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its `GATEWAY_ID` (the reply channel is `confab:reply:<id>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `ws://127.0.0.1:<port>`
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// An anonymous REST client for this gateway.
    pub fn http(&self) -> Http {
        Http::new(self.url())
    }

    /// SIGKILL (no shutdown at all).
    pub fn kill9(&mut self) -> ExitStatus {
        self.proc.kill9()
    }

    /// SIGTERM and wait for the exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.proc.terminate(STOP_TIMEOUT).await
    }

    /// Stops the process if it runs (SIGKILL) and starts a new one on the same port with the
    /// same environment, waiting until it is ready.
    pub async fn restart(&mut self) {
        self.proc.kill9();
        self.restarts += 1;
        let name = format!("{}-restart{}", self.id, self.restarts);
        self.proc = ChildProc::spawn(&name, &confab_binary("gateway"), &[], &self.env);
        self.wait_ready().await;
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn process(&mut self) -> &mut ChildProc {
        &mut self.proc
    }
}

/// A `workers <role>` process.
pub struct Worker {
    role: String,
    name: String,
    env: Vec<(String, String)>,
    proc: ChildProc,
    restarts: u32,
}

impl Worker {
    /// Starts `workers <role>` with `WORKER_NAME` set to a unique name and `env` overrides,
    /// and waits until it does its job: a persistence worker is in the membership set and
    /// every partition has an owner (it owns its share once the rebalance settles); a cleanup
    /// or completion worker has logged that it started.
    pub async fn start(redis: &Redis, role: &str, env: &[(&str, &str)]) -> Worker {
        let name = format!("e2e-{role}-{}", next_seq());
        let mut all = base_env(redis);
        all.push(("WORKER_NAME".into(), name.clone()));
        all.extend(owned_env(env));
        let proc = ChildProc::spawn(&name, &confab_binary("workers"), &[role.to_string()], &all);
        let mut w = Worker {
            role: role.to_string(),
            name,
            env: all,
            proc,
            restarts: 0,
        };
        w.wait_ready(redis).await;
        w
    }

    /// Stops the process if it runs (SIGKILL) and starts a new one with the same name and
    /// environment — the same consumer, as a restarted pod would be — waiting until it is
    /// ready again.
    pub async fn restart(&mut self, redis: &Redis) {
        self.proc.kill9();
        self.restarts += 1;
        let log = format!("{}-restart{}", self.name, self.restarts);
        self.proc = ChildProc::spawn(
            &log,
            &confab_binary("workers"),
            std::slice::from_ref(&self.role),
            &self.env,
        );
        self.wait_ready(redis).await;
    }

    async fn wait_ready(&mut self, redis: &Redis) {
        let start = Instant::now();
        while start.elapsed() < START_TIMEOUT {
            if let Some(status) = self.proc.exited() {
                panic!(
                    "worker {} exited with {status} before becoming ready",
                    self.name
                );
            }
            let ready = match self.role.as_str() {
                "persistence" => self.owns_its_share(redis).await,
                "cleanup" => self.proc.log().contains("cleanup worker started"),
                "completion" => self.proc.log().contains("completion worker started"),
                _ => true,
            };
            if ready {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "worker {} not ready within {START_TIMEOUT:?}\n{}",
            self.name,
            self.proc.log_tail(20)
        );
    }

    /// A member, and the rebalance settled: every partition owned by a live member, each
    /// member holding ⌊P/N⌋ or ⌈P/N⌉ of them.
    async fn owns_its_share(&self, redis: &Redis) -> bool {
        let members = redis.persistence_members().await;
        if !members.contains(&self.name) {
            return false;
        }
        let owners = redis.partition_owners().await;
        let (p, n) = (owners.len(), members.len());
        let all_owned = owners
            .iter()
            .all(|o| o.as_ref().is_some_and(|o| members.contains(o)));
        all_owned
            && members.iter().all(|m| {
                let held = owners.iter().filter(|o| o.as_ref() == Some(m)).count();
                held == p / n || held == p.div_ceil(n)
            })
    }

    pub fn role(&self) -> &str {
        &self.role
    }

    /// Its `WORKER_NAME`, which is also its consumer name in the group.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kill9(&mut self) -> ExitStatus {
        self.proc.kill9()
    }

    pub async fn terminate(&mut self) -> ExitStatus {
        self.proc.terminate(STOP_TIMEOUT).await
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn process(&mut self) -> &mut ChildProc {
        &mut self.proc
    }
}

/// A Redis with gateways and workers. Fields drop in order: processes before Redis.
///
/// In normal operation the dead-letter streams stay empty: dropping a stack checks that
/// (unless the test is already failing, or said [`Stack::expect_dead_letters`]).
pub struct Stack {
    pub gateways: Vec<Gateway>,
    pub workers: Vec<Worker>,
    /// Between the processes and Redis when started with [`Stack::through_proxy`].
    pub proxy: Option<FaultProxy>,
    pub redis: Redis,
    dead_letters_expected: bool,
    /// `REDIS_URL` pointing at the proxy, added to every process's environment.
    redis_env: Vec<(String, String)>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.dead_letters_expected || std::thread::panicking() {
            return;
        }
        let dead = self.redis.dead_letter_count_blocking();
        assert_eq!(dead, 0, "the scenario left {dead} dead letters");
    }
}

impl Stack {
    /// Redis, one gateway and one persistence worker, all with `env`.
    pub async fn start(env: &[(&str, &str)]) -> Stack {
        Self::with(1, 1, 0, env).await
    }

    /// Redis, `gateways` gateways, `persistence` persistence workers and `cleanup` cleanup
    /// workers, all with `env`.
    pub async fn with(
        gateways: usize,
        persistence: usize,
        cleanup: usize,
        env: &[(&str, &str)],
    ) -> Stack {
        Self::in_mode(Mode::Standalone, gateways, persistence, cleanup, env).await
    }

    /// [`Stack::with`] on a standalone Redis or a Redis Cluster.
    pub async fn in_mode(
        mode: Mode,
        gateways: usize,
        persistence: usize,
        cleanup: usize,
        env: &[(&str, &str)],
    ) -> Stack {
        let redis = Redis::start_in(mode).await;
        Self::around(redis, None, gateways, persistence, cleanup, env).await
    }

    /// [`Stack::with`] on a standalone Redis that every process reaches only through a
    /// [`FaultProxy`] (`stack.proxy`); the test's own `stack.redis` connection goes direct.
    pub async fn through_proxy(
        gateways: usize,
        persistence: usize,
        cleanup: usize,
        env: &[(&str, &str)],
    ) -> Stack {
        let redis = Redis::start().await;
        let proxy = FaultProxy::start(redis.port()).await;
        Self::around(redis, Some(proxy), gateways, persistence, cleanup, env).await
    }

    /// Processes around a Redis that is already running (e.g. [`Redis::start_aof`]).
    pub async fn around(
        redis: Redis,
        proxy: Option<FaultProxy>,
        gateways: usize,
        persistence: usize,
        cleanup: usize,
        env: &[(&str, &str)],
    ) -> Stack {
        let redis_env = proxy
            .as_ref()
            .map(|p| vec![("REDIS_URL".to_string(), p.redis_url())])
            .unwrap_or_default();
        let mut stack = Stack {
            gateways: Vec::new(),
            workers: Vec::new(),
            proxy,
            redis,
            dead_letters_expected: false,
            redis_env,
        };
        for _ in 0..persistence {
            stack.add_worker("persistence", env).await;
        }
        for _ in 0..cleanup {
            stack.add_worker("cleanup", env).await;
        }
        for _ in 0..gateways {
            stack.add_gateway(env).await;
        }
        stack
    }

    /// `env` plus the proxy's `REDIS_URL` (which overrides the direct one).
    fn env_with<'a>(&'a self, env: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut all = env.to_vec();
        all.extend(self.redis_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        all
    }

    pub async fn add_gateway(&mut self, env: &[(&str, &str)]) -> &mut Gateway {
        let gw = Gateway::start(&self.redis, &self.env_with(env)).await;
        self.gateways.push(gw);
        let last = self.gateways.len() - 1;
        &mut self.gateways[last]
    }

    pub async fn add_worker(&mut self, role: &str, env: &[(&str, &str)]) -> &mut Worker {
        let w = Worker::start(&self.redis, role, &self.env_with(env)).await;
        self.workers.push(w);
        let last = self.workers.len() - 1;
        &mut self.workers[last]
    }

    /// This scenario dead-letters on purpose (poison entries): skip the check on drop.
    pub fn expect_dead_letters(&mut self) {
        self.dead_letters_expected = true;
    }

    /// The fault controls of the proxy (a stack from [`Stack::through_proxy`]).
    pub fn faults(&self) -> crate::fault_proxy::FaultControl {
        match &self.proxy {
            Some(p) => p.control(),
            None => panic!("this stack was not started through a fault proxy"),
        }
    }

    /// The first gateway.
    pub fn gw(&self) -> &Gateway {
        self.gateways
            .first()
            .unwrap_or_else(|| panic!("this stack has no gateway"))
    }

    /// An anonymous client of the first gateway.
    pub fn http(&self) -> Http {
        self.gw().http()
    }
}

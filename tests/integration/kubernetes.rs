//! The Kubernetes manifests (`contrib/kubernetes/`): valid against Kubernetes' own schema
//! (`kubernetes-validate`, which scripts/install-test-deps.sh installs), wired as
//! docs/kubernetes.md says (the token only as a file, the mount's propagation, the privileges),
//! and what they run works here: the DaemonSet's start-up mounts with its flags, its readiness
//! probe follows the state, a crash's dead mount is detached by the next start, SIGTERM
//! unmounts within the grace period, and the consumers' liveness probe fails on a dead mount.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The Kubernetes versions whose schemas the manifests must pass: the newest the validator
/// knows, and the first with Pod Security admission stable (the namespaces' labels).
const VERSIONS: &[&str] = &["1.37.0", "1.25.0"];
/// The per-tenant options, which a build may not have yet: the start-up test then runs the
/// rest of the command. Any other flag the binary does not know fails it.
const TENANT_FLAGS: &[&str] = &["--tenant-by", "--tenant-cgroup-depth", "--tenant-budget"];

/// The virtual environment scripts/install-test-deps.sh makes for the validator.
fn venv_bin(program: &str) -> PathBuf {
    let p = Path::new(ROOT)
        .join("target/kubernetes-validate/bin")
        .join(program);
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-test-deps.sh",
        p.display()
    );
    p
}

fn manifest(name: &str) -> PathBuf {
    Path::new(ROOT).join("contrib/kubernetes").join(name)
}

/// Every manifest, by name.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("contrib/kubernetes"))
        .expect("contrib/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The documents of a YAML file, read by the validator's own YAML parser (PyYAML).
fn documents(path: &Path) -> Vec<Value> {
    let out = Command::new(venv_bin("python3"))
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)",
        ])
        .arg(path)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// The one document of `kind` in `file`.
fn resource(file: &str, kind: &str) -> Value {
    let mut found: Vec<Value> = documents(&manifest(file))
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "{file}: one {kind}");
    found.remove(0)
}

fn validate(version: &str, files: &[PathBuf]) -> Output {
    Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "-k", version])
        .args(files)
        .output()
        .expect("run kubernetes-validate")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn manifests_pass_the_kubernetes_schema_and_a_broken_one_fails() {
    let files = manifests();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    for expected in [
        "namespace.yaml",
        "daemonset.yaml",
        "secret.example.yaml",
        "consumer-pod.yaml",
        "consumer-pv.yaml",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected}: {names:?}");
    }
    let resources: usize = files.iter().map(|f| documents(f).len()).sum();
    for version in VERSIONS {
        let out = validate(version, &files);
        let said = text(&out);
        assert!(out.status.success(), "against {version}:\n{said}");
        // Every resource was checked, none skipped for want of a schema.
        let passed = said.matches(" passed for resource ").count();
        assert_eq!(passed, resources, "against {version}:\n{said}");
    }
    // The same check fails on a broken manifest: a misspelt field (strict), and a value of the
    // wrong type.
    let dir = tempfile::tempdir().expect("tempdir");
    let good = std::fs::read_to_string(manifest("daemonset.yaml")).expect("read");
    for (from, to) in [
        (
            "terminationGracePeriodSeconds: 30",
            "terminationGracePeriod: 30",
        ),
        ("hostPID: true", "hostPID: \"yes please\""),
    ] {
        assert!(good.contains(from), "daemonset.yaml has no {from:?}");
        let broken = dir.path().join("daemonset.yaml");
        std::fs::write(&broken, good.replacen(from, to, 1)).expect("write");
        let out = validate(VERSIONS[0], &[broken]);
        assert!(
            !out.status.success() && text(&out).contains("did not validate"),
            "{to:?} passed:\n{}",
            text(&out)
        );
    }
}

/// The container of a pod template or pod spec (each manifest has one).
fn container(spec: &Value) -> &Value {
    let c = spec["containers"].as_array().expect("containers");
    assert_eq!(c.len(), 1);
    &c[0]
}

/// The volume mounted by `mount` (a volumeMount) in `spec`.
fn volume<'a>(spec: &'a Value, mount: &Value) -> &'a Value {
    spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mount's volume")
}

/// The volumeMount at `path` in `container`.
fn mount_at<'a>(container: &'a Value, path: &str) -> &'a Value {
    container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"] == path)
        .unwrap_or_else(|| panic!("no volumeMount at {path}"))
}

/// The DaemonSet's start-up script (`sh -c SCRIPT`).
fn start_script(c: &Value) -> String {
    assert_eq!(c["command"], serde_json::json!(["/bin/sh", "-c"]));
    c["args"][0].as_str().expect("script").to_owned()
}

#[test]
fn the_daemonset_takes_the_token_as_a_file_and_shares_its_mount_with_the_node() {
    let ds = resource("daemonset.yaml", "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    let c = container(spec);
    assert_eq!(c["securityContext"]["privileged"], true);
    assert_eq!(
        spec["hostPID"], true,
        "--tenant-by cgroup needs readers' pids"
    );
    assert_eq!(spec["automountServiceAccountToken"], false);
    // The token: a Secret volume read-only to root alone, named by --token-file; nothing in
    // the environment.
    assert!(c.get("env").is_none() && c.get("envFrom").is_none(), "{c}");
    let script = start_script(c);
    let token_mount = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| volume(spec, m).get("secret").is_some())
        .expect("a secret volume");
    assert_eq!(token_mount["readOnly"], true);
    let secret = &volume(spec, token_mount)["secret"];
    assert_eq!(secret["defaultMode"], 0o400);
    assert_eq!(secret["secretName"], "qrypt-token");
    let token_file = format!(
        "{}/{}",
        token_mount["mountPath"].as_str().expect("path"),
        secret["items"][0]["path"].as_str().expect("item")
    );
    assert!(
        script.contains(&format!("--token-file {token_file} ")),
        "{script}"
    );
    assert_eq!(secret["items"][0]["key"], "token");
    let example = resource("secret.example.yaml", "Secret");
    assert_eq!(example["metadata"]["name"], "qrypt-token");
    assert!(
        example["stringData"]["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("PLACEHOLDER")),
        "{example}"
    );
    // The mount: the node's /mnt, both ways; /mnt/qrypt under it; /dev/fuse; the state kept
    // on the node.
    let host = mount_at(c, "/host/mnt");
    assert_eq!(host["mountPropagation"], "Bidirectional");
    assert_eq!(volume(spec, host)["hostPath"]["path"], "/mnt");
    assert!(script.contains("mnt=/host/mnt/qrypt"), "{script}");
    let fuse = mount_at(c, "/dev/fuse");
    assert_eq!(volume(spec, fuse)["hostPath"]["type"], "CharDevice");
    let state = mount_at(c, "/var/lib/qrypt-fs");
    assert_eq!(volume(spec, state)["hostPath"]["path"], "/var/lib/qrypt-fs");
    for flag in [
        "--foreground",
        "--allow-other",
        "--state-dir /var/lib/qrypt-fs",
        "--budget ",
        "--tenant-by cgroup",
        "--tenant-cgroup-depth 3",
        "--tenant-budget ",
    ] {
        assert!(script.contains(flag), "{flag}: {script}");
    }
    assert!(c["resources"]["requests"]["memory"].is_string(), "{c}");
    assert!(c["resources"]["limits"]["memory"].is_string(), "{c}");
    let ns = resource("namespace.yaml", "Namespace");
    assert_eq!(ns["metadata"]["name"], ds["metadata"]["namespace"]);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
}

#[test]
fn consumers_see_the_nodes_mount_read_only_and_nothing_more() {
    for file in ["consumer-pod.yaml", "consumer-pv.yaml"] {
        let pod = resource(file, "Pod");
        let spec = &pod["spec"];
        let c = container(spec);
        let m = mount_at(c, "/mnt/qrypt");
        assert_eq!(m["mountPropagation"], "HostToContainer", "{file}");
        assert_eq!(m["readOnly"], true, "{file}");
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{file}");
        assert!(c["securityContext"].get("privileged").is_none(), "{file}");
        let v = volume(spec, m);
        let host_path = match v.get("persistentVolumeClaim") {
            None => v["hostPath"]["path"].clone(),
            Some(claim) => {
                // The claim is bound to the administrator's volume of the node's /mnt/qrypt.
                let pvc = resource(file, "PersistentVolumeClaim");
                let pv = resource(file, "PersistentVolume");
                assert_eq!(claim["claimName"], pvc["metadata"]["name"]);
                assert_eq!(pvc["spec"]["volumeName"], pv["metadata"]["name"]);
                assert_eq!(pv["spec"]["claimRef"]["name"], pvc["metadata"]["name"]);
                assert_eq!(
                    pv["spec"]["claimRef"]["namespace"],
                    pod["metadata"]["namespace"]
                );
                let ns = resource(file, "Namespace");
                assert_eq!(
                    ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
                    "restricted"
                );
                assert_restricted(spec);
                pv["spec"]["hostPath"]["path"].clone()
            }
        };
        assert_eq!(host_path, "/mnt/qrypt", "{file}");
        assert!(
            c["args"][0]
                .as_str()
                .is_some_and(|a| a.contains("/mnt/qrypt/random")),
            "{file}"
        );
    }
}

/// What the Restricted Pod Security profile asks of a pod spec with one container: volumes of
/// the allowed kinds only, no privilege escalation, no capability but NET_BIND_SERVICE, a
/// non-root user, the runtime's seccomp profile, and nothing of the host's.
fn assert_restricted(spec: &Value) {
    const VOLUMES: &[&str] = &[
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for v in spec["volumes"].as_array().expect("volumes") {
        let kinds: Vec<&String> = v
            .as_object()
            .expect("volume")
            .keys()
            .filter(|k| *k != "name")
            .collect();
        assert!(
            kinds.iter().all(|k| VOLUMES.contains(&k.as_str())),
            "{kinds:?}"
        );
    }
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(spec.get(host).is_none_or(|v| v == false), "{host}");
    }
    let c = container(spec);
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(sc["capabilities"].get("add").is_none());
    assert!(sc.get("privileged").is_none_or(|v| v == false));
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_ne!(spec["securityContext"]["runAsUser"], 0);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
}

/// The DaemonSet's paths, each moved under a temporary directory, and what its start-up
/// runs against the emulator.
struct Node {
    dir: tempfile::TempDir,
    script: String,
    ready: Vec<String>,
    alive: Vec<String>,
    grace: Duration,
    mnt: PathBuf,
}

impl Node {
    fn new() -> Node {
        let ds = resource("daemonset.yaml", "DaemonSet");
        let spec = &ds["spec"]["template"]["spec"];
        let c = container(spec);
        let dir = tempfile::tempdir().expect("tempdir");
        let node = |p: &str| format!("{}{p}", dir.path().display());
        // Every path of the container that is the node's, as the node would have it.
        let moves = [
            ("/host/mnt", node("/mnt")),
            ("/var/lib/qrypt-fs", node("/state")),
            ("/run/secrets/qrypt", node("/secret")),
            ("/usr/bin/qrypt-fs", BIN.to_owned()),
        ];
        for (_, to) in &moves[..3] {
            std::fs::create_dir_all(to).expect("mkdir");
        }
        // As a node has it once the DaemonSet has run there (consumers' volumes need it).
        std::fs::create_dir(node("/mnt/qrypt")).expect("mkdir");
        std::fs::write(node("/secret/token"), format!("{TOKEN}\n")).expect("token");
        std::fs::set_permissions(node("/secret/token"), PermissionsExt::from_mode(0o400))
            .expect("chmod");
        let relocate = |s: &str| {
            let mut s = s.to_owned();
            for (from, to) in &moves {
                s = s.replace(from, to);
            }
            // Nothing of this machine's own is touched.
            for (from, _) in &moves {
                assert!(!s.contains(from), "{from} left in {s}");
            }
            s
        };
        let mut script = start_script(c);
        for (from, _) in &moves {
            assert!(script.contains(from), "the start-up has no {from}");
        }
        script = without_unknown_tenant_flags(&relocate(&script));
        // Entering PID 1's cgroup namespace needs what a privileged pod with hostPID has; a
        // sandbox running the tests may refuse it, and then runs the rest.
        let enter = "nsenter --target 1 --cgroup -- ";
        assert!(script.contains(enter), "{script}");
        let entered = Command::new("nsenter")
            .args(["--target", "1", "--cgroup", "--", "true"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !entered {
            eprintln!("nsenter into PID 1's cgroup namespace refused here: run without it");
            script = script.replace(enter, "");
        }
        let ready = c["readinessProbe"]["exec"]["command"]
            .as_array()
            .expect("readiness probe")
            .iter()
            .map(|a| relocate(a.as_str().expect("arg")))
            .collect();
        // The consumers' probe, on the node's /mnt/qrypt.
        let consumer = resource("consumer-pod.yaml", "Pod");
        let alive = container(&consumer["spec"])["livenessProbe"]["exec"]["command"]
            .as_array()
            .expect("liveness probe")
            .iter()
            .map(|a| {
                a.as_str()
                    .expect("arg")
                    .replace("/mnt/qrypt", &node("/mnt/qrypt"))
            })
            .collect();
        let grace = Duration::from_secs(
            spec["terminationGracePeriodSeconds"]
                .as_u64()
                .expect("terminationGracePeriodSeconds"),
        );
        let mnt = PathBuf::from(node("/mnt/qrypt"));
        Node {
            dir,
            script,
            ready,
            alive,
            grace,
            mnt,
        }
    }

    /// Runs the container's command as the kubelet would, stderr to `log`.
    fn start(&self, emu: &Emulator, log: &str) -> Child {
        let log = std::fs::File::create(self.dir.path().join(log)).expect("log");
        Command::new("/bin/sh")
            .args(["-c", &self.script])
            .env("QRYPT_ENDPOINT", emu.url())
            .env_remove("QRYPT_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start")
    }

    fn probe(command: &[String]) -> bool {
        Command::new(&command[0])
            .args(&command[1..])
            .stderr(Stdio::null())
            .status()
            .expect("probe")
            .success()
    }

    fn ready(&self) -> bool {
        Self::probe(&self.ready)
    }

    fn alive(&self) -> bool {
        Self::probe(&self.alive)
    }

    fn wait_ready(&self, want: bool, child: &mut Child) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ready() != want {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("the start-up exited ({st}): {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "readiness never {want}: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        let mut s = String::new();
        for name in ["first.log", "second.log", "third.log"] {
            s += &std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        }
        s
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Kills `child` if it still runs when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The start-up script without the tenant options when this build has none of them (each
/// with its value); any other flag this build does not know fails the test.
fn without_unknown_tenant_flags(script: &str) -> String {
    let out = Command::new(BIN).arg("--help").output().expect("--help");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let known = |flag: &str| {
        help.split(|c: char| c.is_whitespace() || c == ',' || c == '=')
            .any(|w| w == flag)
    };
    // The words after the binary (nsenter's own flags come before it).
    let (_, command) = script.split_once(BIN).expect("the start-up runs qrypt-fs");
    let flags: HashSet<&str> = command
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .collect();
    let mut script = script.to_owned();
    for flag in flags {
        if known(flag) {
            continue;
        }
        assert!(
            TENANT_FLAGS.contains(&flag),
            "{flag} is no flag of qrypt-fs"
        );
        let value = script
            .split_whitespace()
            .skip_while(|w| *w != flag)
            .nth(1)
            .expect("a value")
            .to_owned();
        script = script.replace(&format!("{flag} {value}"), "");
    }
    script
}

#[test]
fn the_daemonset_start_up_serves_recovers_from_a_crash_and_stops_on_sigterm() {
    require_program("nsenter");
    require_program("mountpoint");
    let emu = emulator();
    let node = Node::new();
    assert!(
        node.alive(),
        "the consumers' probe fails on an empty /mnt/qrypt"
    );
    let mut first = Running(node.start(&emu, "first.log"));
    node.wait_ready(true, &mut first.0);
    // The command execs into qrypt-fs, so the kubelet's SIGTERM reaches the daemon itself.
    let exe = std::fs::read_link(format!("/proc/{}/exe", first.0.id())).expect("exe");
    assert_eq!(exe, Path::new(BIN).canonicalize().expect("bin"));
    assert_eq!(read_exact(&node.mnt.join("random"), 32).len(), 32);
    assert!(node.alive());

    // Not ready while the upstream fails; ready again once it answers. The read takes
    // buffered bytes only, then the refill below half the buffer meets the 503s.
    let buffered = || {
        let text = std::fs::read_to_string(node.mnt.join("status")).expect("status");
        status_num::<u64>(&parse_status(&text), "buffered_bytes")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while buffered() < 3 << 20 {
        assert!(Instant::now() < deadline, "the buffer never held 3 MiB");
        std::thread::sleep(Duration::from_millis(100));
    }
    emu.set_fault(Fault::Status(503), None);
    let _ = read_exact(&node.mnt.join("random"), 3 << 20);
    node.wait_ready(false, &mut first.0);
    emu.clear_fault();
    node.wait_ready(true, &mut first.0);

    // A crash of everything (the container killed, supervisor included) leaves a dead mount:
    // the consumers' probe fails on it, and the next start detaches it and serves again.
    kill_supervisor_of(first.0.id() as i32);
    first.0.kill().expect("SIGKILL");
    first.0.wait().expect("wait");
    assert!(is_mounted(&node.mnt), "a crash leaves the mount behind");
    assert!(!node.alive(), "the consumers' probe passes on a dead mount");
    assert!(!node.ready());
    let mut second = Running(node.start(&emu, "second.log"));
    node.wait_ready(true, &mut second.0);
    assert_eq!(read_exact(&node.mnt.join("random"), 32).len(), 32);
    assert!(node.alive());

    // A second start on a live mount refuses it.
    let mut third = node.start(&emu, "third.log");
    let st = wait_timeout(&mut third, Duration::from_secs(30)).expect("refused");
    assert!(!st.success());
    assert!(
        node.log_text().contains("already mounted"),
        "{}",
        node.log_text()
    );

    // A consumer that started while it was mounted holds a copy of the mount (its volume).
    let consumer = mount_point();
    nix::mount::mount(
        Some(&node.mnt),
        consumer.path(),
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind");
    assert_eq!(read_exact(&consumer.path().join("random"), 32).len(), 32);

    // SIGTERM, as the kubelet sends it: unmounted and gone well within the grace period,
    // though the consumer's copy keeps the FUSE session; the copy is dead from then on.
    let pid = nix::unistd::Pid::from_raw(second.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let st = wait_timeout(&mut second.0, node.grace).expect("exited within the grace period");
    assert!(st.success(), "{st}: {}", node.log_text());
    assert!(!is_mounted(&node.mnt));
    assert!(node.alive(), "an empty /mnt/qrypt is fine for consumers");
    let err = std::fs::read_dir(consumer.path()).expect_err("the copy is dead");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
}

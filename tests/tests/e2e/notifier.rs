//! The elected notifier and its mail, over a real SMTP server.

use std::net::SocketAddr;
use std::time::Duration;

use buildmesh_node::smtp_sink::{self, Mailbox};
use buildmesh_tests::{GitRepo, Mesh, is_verdict, wait_for};

const LONG: Duration = Duration::from_secs(90);

const CI: &str = "case \"$(cat state)\" in green) echo ok ;; orange) echo 'DeprecationWarning: x' ;; red) echo 'FAIL: test_x'; exit 1 ;; esac\n";

fn builders(repo: &str) -> String {
    format!(
        "version = 1\n[[builder]]\nname = \"linux\"\nrepo = \"{repo}\"\nbranches = [\"main\"]\ntags = [\"stable\"]\n[[builder.step]]\nname = \"test\"\nrun = \"sh ci.sh\"\nwarn = [\"DeprecationWarning\"]\n"
    )
}

/// A loopback port for an SMTP sink that starts later: bound but not listening, so that
/// connections to it are refused until then and no other process can take it meanwhile.
fn reserve_port() -> (SocketAddr, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
    (socket.local_addr().unwrap(), socket)
}

/// Starts the SMTP sink on a port [`reserve_port`] kept.
fn sink_on(socket: tokio::net::TcpSocket) -> Mailbox {
    let listener = socket.listen(64).unwrap().into_std().unwrap();
    listener.set_nonblocking(false).unwrap();
    smtp_sink::start(listener).unwrap()
}

async fn mesh_with_mail(n: usize, smtp: SocketAddr) -> Mesh {
    Mesh::start_with(n, |_, c| {
        c.notifier.smtp = Some(("127.0.0.1".into(), smtp.port()));
        c.notifier.to = vec!["list@localhost".into()];
    })
    .await
}

async fn holder(mesh: &Mesh) -> usize {
    wait_for("a notifier holder", LONG, || async {
        holder_index(mesh).await.is_some()
    })
    .await;
    holder_index(mesh).await.expect("a holder")
}

async fn holder_index(mesh: &Mesh) -> Option<usize> {
    for (i, n) in mesh.nodes.iter().enumerate() {
        if let Some(n) = n
            && n.notifier().await.map(|v| v.holding).unwrap_or(false)
        {
            return Some(i);
        }
    }
    None
}

async fn push(mesh: &Mesh, via: usize, repo: &GitRepo, state: &str) -> String {
    let sha = repo.commit("main", &[("ci.sh", CI), ("state", state)], state);
    mesh.announce(via, &repo.url(), "main", &sha).await;
    sha
}

async fn mails_settle(mesh: &Mesh, mailbox: &Mailbox, want: usize) {
    wait_for(&format!("{want} mail(s)"), LONG, || async {
        mailbox.len() >= want
    })
    .await;
    // Every node holds the same NotificationSent records, one per mail.
    wait_for("the mail records everywhere", LONG, || async {
        let mut counts = Vec::new();
        for n in mesh.nodes.iter().flatten() {
            let v: serde_json::Value =
                reqwest::get(format!("http://{}/api/v1/notifications", n.api))
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
            counts.push(v.as_array().unwrap().len());
        }
        counts.iter().all(|c| *c == want)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn red_transitions_mail_once_and_exceptions_do_not_count() {
    let (addr, mailbox) = smtp_sink::bind(([127, 0, 0, 1], 0).into()).unwrap();
    let mesh = mesh_with_mail(3, addr).await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    mesh.publish_builders(0, &builders(&repo.url())).await;
    holder(&mesh).await;

    // green, red: a mail. exception, red: none (red, exception, red is one breakage).
    // green, orange, red: a mail.
    for (k, state) in ["green", "red", "exception", "red", "green", "orange", "red"]
        .into_iter()
        .enumerate()
    {
        let sha = if state == "exception" {
            // A commit no worker can check out: every attempt is an exception.
            let sha = "0123456789abcdef0123456789abcdef01234567".to_string();
            mesh.announce(0, &repo.url(), "main", &sha).await;
            sha
        } else {
            push(&mesh, 0, &repo, state).await
        };
        let b = mesh
            .wait_build(1, "linux", &sha, LONG, |r| {
                is_verdict(r) || r == "exception"
            })
            .await;
        let want = match state {
            "green" => "success",
            "orange" => "warnings",
            "red" => "failure",
            _ => "exception",
        };
        assert_eq!(b.result, want, "{b:?}");
        if k == 1 {
            mails_settle(&mesh, &mailbox, 1).await;
        }
    }
    mails_settle(&mesh, &mailbox, 2).await;
    let mails = mailbox.all();
    assert_eq!(
        mails.len(),
        2,
        "{:#?}",
        mails.iter().map(|m| &m.subject).collect::<Vec<_>>()
    );
    assert!(
        mails
            .iter()
            .all(|m| m.subject.contains("linux on main is red")
                && m.to == vec!["list@localhost".to_string()])
    );
    assert!(mails[0].body.contains("FAIL: test_x"), "{}", mails[0].body);
    assert!(
        mails[1].body.contains("before: warnings"),
        "{}",
        mails[1].body
    );
    assert_ne!(mails[0].message_id, mails[1].message_id);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smtp_down_when_the_transition_happens_the_mail_arrives_once_later() {
    let (addr, reserved) = reserve_port();
    let mesh = mesh_with_mail(3, addr).await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    mesh.publish_builders(0, &builders(&repo.url())).await;
    holder(&mesh).await;
    let green = push(&mesh, 0, &repo, "green").await;
    mesh.wait_build(0, "linux", &green, LONG, is_verdict).await;
    let red = push(&mesh, 0, &repo, "red").await;
    mesh.wait_build(0, "linux", &red, LONG, is_verdict).await;
    // The holder tries, fails, and keeps the mail.
    wait_for("the mail to be waiting", LONG, || async {
        for n in mesh.nodes.iter().flatten() {
            if n.notifier()
                .await
                .map(|v| v.holding && v.waiting == 1)
                .unwrap_or(false)
            {
                return true;
            }
        }
        false
    })
    .await;
    let mailbox = sink_on(reserved);
    mails_settle(&mesh, &mailbox, 1).await;
    assert_eq!(mailbox.len(), 1);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_notifier_killed_after_a_red_result_a_new_holder_sends_exactly_one_mail() {
    let (addr, reserved) = reserve_port();
    let mut mesh = mesh_with_mail(3, addr).await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    mesh.publish_builders(0, &builders(&repo.url())).await;
    let first = holder(&mesh).await;
    let announcer = (0..3).find(|i| *i != first).unwrap();
    let green = push(&mesh, announcer, &repo, "green").await;
    mesh.wait_build(announcer, "linux", &green, LONG, is_verdict)
        .await;
    let red = push(&mesh, announcer, &repo, "red").await;
    mesh.wait_build(announcer, "linux", &red, LONG, is_verdict)
        .await;
    // The holder has the transition but its SMTP server is down: kill it now.
    wait_for("the holder to have the mail waiting", LONG, || async {
        mesh.node(first)
            .notifier()
            .await
            .map(|v| v.waiting == 1)
            .unwrap_or(false)
    })
    .await;
    let old = mesh.id(first);
    mesh.nodes[first].take().unwrap().abort();
    let mailbox = sink_on(reserved);
    mails_settle(&mesh, &mailbox, 1).await;
    let records: serde_json::Value = reqwest::get(format!(
        "http://{}/api/v1/notifications",
        mesh.node(announcer).api
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_ne!(
        records[0]["author"],
        old.to_string(),
        "sent by the new holder: {records}"
    );
    assert_eq!(mailbox.len(), 1);
    let _ = &mut mesh;
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_of_two_and_one_the_side_of_one_sends_nothing() {
    let (addr, mailbox) = smtp_sink::bind(([127, 0, 0, 1], 0).into()).unwrap();
    let mesh = mesh_with_mail(3, addr).await;
    let repo = GitRepo::new(mesh.dir.path().join("repo"));
    mesh.publish_builders(0, &builders(&repo.url())).await;
    let lonely = holder(&mesh).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != lonely).collect();
    let green = push(&mesh, others[0], &repo, "green").await;
    for i in 0..3 {
        mesh.wait_build(i, "linux", &green, LONG, is_verdict).await;
    }
    // Cut the holder off from the other two.
    let other_ids: Vec<_> = others.iter().map(|i| mesh.id(*i)).collect();
    mesh.node(lonely).isolate(&other_ids, true).await.unwrap();
    for i in &others {
        mesh.node(*i)
            .isolate(&[mesh.id(lonely)], true)
            .await
            .unwrap();
    }
    // Cut off, the lonely node's lease runs out and the majority elects a holder of its own.
    wait_for("the lonely node to stop holding", LONG, || async {
        !mesh
            .node(lonely)
            .notifier()
            .await
            .map(|v| v.holding)
            .unwrap_or(true)
    })
    .await;
    wait_for("a holder on the majority side", LONG, || async {
        for i in &others {
            if mesh
                .node(*i)
                .notifier()
                .await
                .map(|v| v.holding)
                .unwrap_or(false)
            {
                return true;
            }
        }
        false
    })
    .await;
    // The same red commit reaches both sides; both build it; only the majority mails.
    let red = repo.commit("main", &[("state", "red")], "red");
    mesh.announce(lonely, &repo.url(), "main", &red).await;
    mesh.announce(others[0], &repo.url(), "main", &red).await;
    mesh.wait_build(lonely, "linux", &red, LONG, is_verdict)
        .await;
    mesh.wait_build(others[0], "linux", &red, LONG, is_verdict)
        .await;
    wait_for("one mail", LONG, || async { !mailbox.is_empty() }).await;
    let v = mesh.node(lonely).notifier().await.unwrap();
    assert_eq!(v.sent_here, 0, "the side of one sent nothing: {v:?}");
    // Heal: still exactly one mail for the transition.
    mesh.node(lonely).isolate(&other_ids, false).await.unwrap();
    for i in &others {
        mesh.node(*i)
            .isolate(&[mesh.id(lonely)], false)
            .await
            .unwrap();
    }
    mesh.wait_converged(LONG).await;
    mails_settle(&mesh, &mailbox, 1).await;
    assert_eq!(mailbox.len(), 1);
    mesh.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_missing_longer_than_its_time_mails_its_owner_once() {
    let (addr, mailbox) = smtp_sink::bind(([127, 0, 0, 1], 0).into()).unwrap();
    let mut mesh = Mesh::start_some(4, 0).await;
    for i in 0..4 {
        let c = mesh.config_mut(i);
        c.notifier.smtp = Some(("127.0.0.1".into(), addr.port()));
        c.notifier.missing_after = Some(Duration::from_secs(2));
    }
    for i in 0..4 {
        mesh.start_node(i).await;
    }
    holder(&mesh).await;
    // Every node has heard node 4 before it goes.
    for i in 0..3 {
        wait_for("node 4 heard", LONG, || async {
            mesh.node(i)
                .nodes()
                .await
                .unwrap_or_default()
                .iter()
                .any(|n| n.name == "node-4" && n.live)
        })
        .await;
    }
    mesh.stop_node(3).await;
    wait_for("the owner's mail", LONG, || async { !mailbox.is_empty() }).await;
    let mail = &mailbox.all()[0];
    assert_eq!(mail.to, vec!["node-4-owner@localhost".to_string()]);
    assert!(
        mail.subject.contains("worker node-4 is missing"),
        "{}",
        mail.subject
    );
    // Once: the record of the mail reaches every node, and no second mail follows it.
    mails_settle(&mesh, &mailbox, 1).await;
    assert_eq!(mailbox.len(), 1);
    mesh.shutdown().await;
}

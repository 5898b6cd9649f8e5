//! The red-transition mail: subject naming builder, branch, commit and worker; a body with the
//! failing step, the last lines of its log and how to fetch the whole log from any node; the
//! transition's Message-ID. Sent with lettre over SMTP (plain or STARTTLS).

use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use buildmesh_protocol::transitions::{Kind, Transition};

use crate::claimer::ClaimerClient;
use crate::config::NotifierSettings;
use crate::replica::ReplicaClient;

const TAIL_LINES: usize = 40;

async fn body(
    t: &Transition,
    claimer: &ClaimerClient,
    replica: &ReplicaClient,
    api_hint: &str,
) -> (String, String) {
    let builds = claimer.builds().await.unwrap_or_default();
    let build = builds
        .into_iter()
        .find(|b| b.builder == t.builder && b.branch == t.branch && b.sha == t.sha);
    let worker = match &build {
        Some(b) => match b.worker {
            Some(w) => {
                let nodes = replica.nodes().await.unwrap_or_default();
                nodes
                    .iter()
                    .find(|n| n.id == w)
                    .map(|n| n.name.clone())
                    .unwrap_or_else(|| w.short())
            }
            None => "?".into(),
        },
        None => "?".into(),
    };
    let what = match t.kind {
        Kind::Broken => "is red",
        Kind::Fixed => "is green again",
        Kind::StillFailing => "is still red",
    };
    let short = &t.sha[..t.sha.len().min(12)];
    let subject = format!(
        "buildmesh: {} on {} {what} at {short} (worker {worker})",
        t.builder, t.branch
    );
    let mut text = format!(
        "Builder:  {}\nBranch:   {}\nCommit:   {}\nWorker:   {worker}\nResult:   {} (before: {})\n",
        t.builder,
        t.branch,
        t.sha,
        t.result,
        t.previous
            .map(|p| p.to_string())
            .unwrap_or_else(|| "none".into())
    );
    if let Some(b) = &build {
        text.push_str(&format!("Build:    {}\n", b.id));
        if let Some(step) = b
            .steps
            .iter()
            .find(|s| s.result != buildmesh_protocol::record::ResultCode::Success)
        {
            text.push_str(&format!(
                "\nFailing step: {} (exit code {})\n",
                step.name,
                step.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "none".into())
            ));
            if let Some(h) = step.log
                && let Ok(Some(log)) = replica.blob(h, b.worker).await
            {
                let log = String::from_utf8_lossy(&log);
                let lines: Vec<&str> = log.lines().collect();
                let from = lines.len().saturating_sub(TAIL_LINES);
                text.push_str(&format!(
                    "\nLast {} lines of its log:\n\n",
                    lines.len() - from
                ));
                for l in &lines[from..] {
                    text.push_str("    ");
                    text.extend(l.chars().take(400));
                    text.push('\n');
                }
            }
        }
        text.push_str(&format!(
            "\nThe whole log, from any node of the mesh:\n\n    buildmesh log --node {api_hint} {}\n",
            b.id
        ));
    }
    (subject, text)
}

/// Builds and sends the mail for `t`. An error means the server did not take it.
pub(crate) async fn send(
    settings: &NotifierSettings,
    host: &str,
    port: u16,
    t: &Transition,
    claimer: &ClaimerClient,
    replica: &ReplicaClient,
    api_hint: &str,
) -> Result<(), String> {
    // A missing worker's mail goes to its owner, not to the list.
    let missing = t.builder.starts_with("worker ") && t.branch.contains('@');
    let (subject, text) = if missing {
        let name = t.builder.trim_start_matches("worker ");
        let (id, _) = t.sha.split_once(':').unwrap_or((&t.sha, ""));
        (
            format!("buildmesh: worker {name} is missing"),
            format!(
                "The buildmesh worker {name} ({id}) has not been heard from for longer than the\nconfigured time. Its jobs run elsewhere meanwhile. Check the host:\n\n    buildmesh nodes --node {api_hint}\n"
            ),
        )
    } else {
        body(t, claimer, replica, api_hint).await
    };
    let mut builder = Message::builder()
        .from(settings.from.parse().map_err(|e| format!("from: {e}"))?)
        .subject(subject)
        .message_id(Some(t.message_id()));
    let recipients: Vec<String> = if missing {
        vec![t.branch.clone()]
    } else {
        settings.to.clone()
    };
    for to in &recipients {
        builder = builder.to(to.parse().map_err(|e| format!("to {to}: {e}"))?);
    }
    // Plain 8-bit text reads best in any client; a body that cannot be sent that way (a very
    // long log line) falls back to the encoding lettre picks.
    let text = text.replace('\n', "\r\n");
    let body =
        Body::new_with_encoding(text, ContentTransferEncoding::EightBit).unwrap_or_else(Body::new);
    let part = SinglePart::builder()
        .header(ContentType::TEXT_PLAIN)
        .body(body);
    let message = builder.singlepart(part).map_err(|e| e.to_string())?;
    let mut transport = if settings.starttls {
        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host).map_err(|e| e.to_string())?
    } else {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
    }
    .port(port)
    .timeout(Some(std::time::Duration::from_secs(20)));
    if let (Some(user), Some(pass)) = (&settings.username, &settings.password) {
        transport = transport.credentials(Credentials::new(user.clone(), pass.clone()));
    }
    transport
        .build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

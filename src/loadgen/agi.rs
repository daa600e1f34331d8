//! Asterisk's side of one FastAGI call, as Asterisk 22 plays it (tests/fixtures/asterisk):
//! the environment block, a reply to every command, the unsolicited `HANGUP` after a hang-up,
//! and the trailing `HANGUP` Asterisk writes when the server ends the session.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{Failure, Outcome};

/// The environment block of a PJSIP call (`env_sip_84951234567`) with another caller ID.
fn env_block(agi: SocketAddr, caller_id: &str) -> String {
    format!(
        "agi_network: yes\nagi_network_script: check\nagi_request: agi://{agi}/check\n\
         agi_channel: PJSIP/pstn-00000006\nagi_language: en\nagi_type: PJSIP\n\
         agi_uniqueid: 1795873601.36\nagi_version: 22.10.1\nagi_callerid: {caller_id}\n\
         agi_calleridname: unknown\nagi_callingpres: 0\nagi_callingani2: 0\n\
         agi_callington: 0\nagi_callingtns: 0\nagi_dnid: 4951234567\nagi_rdnis: unknown\n\
         agi_context: from-pstn\nagi_extension: 4951234567\nagi_priority: 2\n\
         agi_enhanced: 0.0\nagi_accountcode: \nagi_threadid: 139764346042048\n\n"
    )
}

/// Asterisk 22's reply to one command line, and what it tells about the verdict.
fn reply(line: &str) -> (&'static [u8], Option<Outcome>) {
    if let Some(value) = line.strip_prefix("SET VARIABLE CALLGUARD_VERDICT ") {
        let verdict = match value.trim_matches('"') {
            "block" => Outcome::Block,
            "allow" => Outcome::Allow,
            _ => Outcome::Other,
        };
        (b"200 result=1\n", Some(verdict))
    } else if line.starts_with("SET VARIABLE ") {
        (b"200 result=1\n", None)
    } else if line.starts_with("EXEC Hangup") {
        // The app hangs up (-1), then the channel reports it: the unsolicited HANGUP.
        (b"200 result=-1\nHANGUP\n", None)
    } else if line == "HANGUP" || line.starts_with("HANGUP ") {
        (b"200 result=1\nHANGUP\n", None)
    } else if line.starts_with("EXEC ") || line.starts_with("SET ") {
        (b"200 result=0\n", None)
    } else {
        (b"510 Invalid or unknown command\n", None)
    }
}

/// Places one call; `None` on any error (or, verifying, when no verdict came).
pub async fn call(agi: SocketAddr, caller_id: &str, count_only: bool) -> Option<Outcome> {
    place(agi, caller_id, count_only).await.ok()
}

/// Places one call and tells a refused connection from a session that ended without a verdict.
pub async fn place(agi: SocketAddr, caller_id: &str, count_only: bool) -> Result<Outcome, Failure> {
    let mut stream = TcpStream::connect(agi)
        .await
        .map_err(|_| Failure::Connect)?;
    stream.set_nodelay(true).map_err(|_| Failure::Connect)?;
    stream
        .write_all(env_block(agi, caller_id).as_bytes())
        .await
        .map_err(|_| Failure::NoVerdict)?;
    let (read, mut write) = stream.split();
    let mut reader = BufReader::with_capacity(1024, read);
    let mut line = String::with_capacity(128);
    let mut verdict = None;
    let mut answered = false;
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) => break,
            Ok(_) => {}
            // A server that closed without reading everything resets: what came before counts.
            Err(_) if answered => break,
            Err(_) => return Err(Failure::NoVerdict),
        }
        answered = true;
        let (bytes, told) = reply(line.trim_end_matches('\n'));
        verdict = verdict.or(told);
        if write.write_all(bytes).await.is_err() {
            break;
        }
    }
    // Asterisk writes HANGUP when the server ends the session (AGISIGHUP defaults to yes),
    // then closes; the server has usually gone already.
    let _trailing = write.write_all(b"HANGUP\n").await;
    if count_only {
        answered.then_some(Outcome::Answered)
    } else {
        verdict
    }
    .ok_or(Failure::NoVerdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_as_asterisk_22() {
        assert_eq!(
            reply("SET VARIABLE CALLGUARD_VERDICT \"block\""),
            (&b"200 result=1\n"[..], Some(Outcome::Block))
        );
        assert_eq!(
            reply("SET VARIABLE CALLGUARD_VERDICT \"tag\"").1,
            Some(Outcome::Other)
        );
        assert_eq!(reply("EXEC Hangup 21").0, b"200 result=-1\nHANGUP\n");
        assert_eq!(reply("HANGUP").0, b"200 result=1\nHANGUP\n");
        assert_eq!(reply("NOPE").0, b"510 Invalid or unknown command\n");
    }

    #[test]
    fn env_block_ends_with_one_empty_line() {
        let env = env_block("127.0.0.1:4573".parse().expect("addr"), "+74951234567");
        assert!(env.ends_with("agi_threadid: 139764346042048\n\n"));
        assert!(env.contains("agi_callerid: +74951234567\n"));
    }
}

//! How the peers read what callguard writes: ports of Asterisk's FastAGI command reader and of
//! FreeSWITCH's Event Socket command reader, so tests can check that a value stays inside the
//! one command it was written into.

/// Port of res_agi.c `parse_args` (without the 128-argument cap), input as the C string
/// `run_agi` passes: trailing "\n" removed, ends at the first NUL.
pub fn asterisk_parse_args(line: &[u8]) -> Vec<Vec<u8>> {
    let mut args: Vec<Vec<u8>> = Vec::new();
    let (mut quoted, mut escaped, mut whitespace) = (false, false, true);
    for &c in line.iter().take_while(|&&c| c != 0) {
        match c {
            b'"' if !escaped => {
                quoted = !quoted;
                if quoted && whitespace {
                    args.push(Vec::new());
                    whitespace = false;
                }
                escaped = false;
                continue;
            }
            b' ' | b'\t' if !quoted && !escaped => {
                whitespace = true;
                continue;
            }
            b'\\' if !escaped => {
                escaped = true;
                continue;
            }
            _ => {}
        }
        if whitespace {
            args.push(Vec::new());
            whitespace = false;
        }
        if let Some(arg) = args.last_mut() {
            arg.push(c);
        }
        escaped = false;
    }
    args
}

/// What Asterisk receives as command lines: `bytes` split the way `run_agi` reads (up to "\n"
/// or `buf_len - 1` bytes), each parsed by [`asterisk_parse_args`].
///
/// # Panics
/// If an argument is not UTF-8: the encoders never split a character.
pub fn asterisk_reads(bytes: &[u8], buf_len: usize) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let take = rest
            .iter()
            .take(buf_len - 1)
            .position(|&b| b == b'\n')
            .map_or((buf_len - 1).min(rest.len()), |i| i + 1);
        let (line, tail) = rest.split_at(take);
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        commands.push(
            asterisk_parse_args(line)
                .into_iter()
                .map(|a| String::from_utf8(a).expect("encoder keeps UTF-8 intact"))
                .collect(),
        );
        rest = tail;
    }
    commands
}

/// One command as FreeSWITCH's `read_packet` + `parse_command` see it: the first line, and the
/// other lines as (name, value).
pub type FsPacket = (String, Vec<(String, String)>);

/// What FreeSWITCH's `read_packet` + `parse_command` see in `bytes`: packets end at two LFs
/// with only CRs between them, empty lines before a packet are skipped, the first line is the
/// command, other lines split at the first `:` with leading spaces dropped (lines without `:`
/// are ignored).
///
/// # Panics
/// If `bytes` ends inside a packet: every command callguard writes is complete.
pub fn fs_read_packets(bytes: &[u8]) -> Vec<FsPacket> {
    let mut packets = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut crcount = 0;
    for &b in bytes {
        if cur.is_empty() && (b == b'\r' || b == b'\n') {
            continue;
        }
        cur.push(b);
        if b == b'\n' {
            crcount += 1;
        } else if b != b'\r' {
            crcount = 0;
        }
        if crcount == 2 {
            let text = String::from_utf8_lossy(&cur).into_owned();
            let mut lines = text.split(['\r', '\n']).filter(|l| !l.is_empty());
            let command = lines.next().unwrap_or_default().to_owned();
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.to_owned(), v.trim_start_matches(' ').to_owned()))
                .collect();
            packets.push((command, headers));
            cur.clear();
            crcount = 0;
        }
    }
    assert!(
        cur.is_empty(),
        "unterminated packet: {:?}",
        String::from_utf8_lossy(&cur)
    );
    packets
}

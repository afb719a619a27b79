//! A scriptable agent for tests: its arguments, split on whitespace, are steps run in order.
//!   sleep:SECS         sleep
//!   print:TEXT         write TEXT and a newline to stdout
//!   stderr:TEXT        write TEXT and a newline to stderr
//!   flood:BYTES        write BYTES bytes of output to stdout as fast as possible
//!   invalid-utf8       write bytes that are not UTF-8
//!   ignore-term        ignore SIGTERM from now on
//!   lines:FROM-TO      print "line N" for N in FROM..=TO, flushing each line
//!   grandchild:PATH    start a grandchild (sleeping, ignoring SIGTERM) and write its pid to PATH
//!   pid:PATH           write own pid to PATH
//!   count:PATH         append one line to PATH (counts runs)
//!   write:NAME=BYTES   create file NAME (percent-encoded, directories made) holding BYTES bytes of a pattern
//!   symlink:NAME=TARGET create symbolic link NAME pointing at TARGET
//!   exit:CODE          exit with CODE
//!   once:PATH          skip the next step if PATH exists, else create PATH (a step only the first run takes)
//!   cat:PATH           print the file at PATH line by line, flushing each (a CLI's recorded stream, replayed)

use std::io::Write;

fn main() {
    let mut out = std::io::stdout().lock();
    let steps: Vec<String> = std::env::args()
        .skip(1)
        .flat_map(|a| a.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect();
    let mut skip_next = false;
    for step in steps {
        if std::mem::take(&mut skip_next) {
            continue;
        }
        let (name, arg) = step.split_once(':').unwrap_or((step.as_str(), ""));
        match name {
            "once" => {
                skip_next = std::path::Path::new(arg).exists();
                std::fs::write(arg, "").expect("once:PATH");
            }
            "sleep" => std::thread::sleep(std::time::Duration::from_secs_f64(
                arg.parse().expect("sleep:SECS"),
            )),
            "print" => {
                writeln!(out, "{arg}").ok();
                out.flush().ok();
            }
            "cat" => {
                for line in std::fs::read_to_string(arg).expect("cat:PATH").lines() {
                    writeln!(out, "{line}").ok();
                    out.flush().ok();
                }
            }
            "stderr" => {
                eprintln!("{arg}");
            }
            "flood" => {
                let mut left: usize = arg.parse().expect("flood:BYTES");
                let block = vec![b'x'; 64 * 1024];
                while left > 0 {
                    let n = left.min(block.len());
                    out.write_all(&block[..n]).expect("stdout");
                    left -= n;
                }
                out.flush().ok();
            }
            "invalid-utf8" => {
                out.write_all(b"ok \xff\xfe bad \xc3\x28 end\n").ok();
                out.flush().ok();
            }
            "ignore-term" => unsafe {
                libc::signal(libc::SIGTERM, libc::SIG_IGN);
            },
            "grandchild" => {
                // Deliberately never waited for: the grandchild must outlive this step.
                #[allow(clippy::zombie_processes)]
                let child = std::process::Command::new("sh")
                    .args(["-c", "trap '' TERM; sleep 60"])
                    .spawn()
                    .expect("spawn grandchild");
                std::fs::write(arg, child.id().to_string()).expect("write pid");
            }
            "lines" => {
                // lines:FROM-TO prints "line N" for each N, one write per line.
                let (from, to) = arg.split_once('-').expect("lines:FROM-TO");
                let (from, to): (u64, u64) = (from.parse().expect("FROM"), to.parse().expect("TO"));
                let mut out = std::io::stdout().lock();
                for n in from..=to {
                    writeln!(out, "line {n}").expect("stdout");
                    out.flush().expect("stdout");
                }
            }
            "pid" => std::fs::write(arg, std::process::id().to_string()).expect("write pid"),
            "count" => {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(arg)
                    .expect("count file");
                writeln!(f, "run").ok();
            }
            "write" => {
                let (name, size) = arg.split_once('=').expect("write:NAME=BYTES");
                let name = percent_decode(name);
                if let Some(parent) = std::path::Path::new(&name).parent() {
                    std::fs::create_dir_all(parent).expect("make directories");
                }
                let size: usize = size.parse().expect("BYTES");
                let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
                std::fs::write(&name, data).expect("write file");
            }
            "symlink" => {
                let (name, target) = arg.split_once('=').expect("symlink:NAME=TARGET");
                std::os::unix::fs::symlink(target, percent_decode(name)).expect("symlink");
            }
            "exit" => std::process::exit(arg.parse().expect("exit:CODE")),
            other => panic!("unknown step {other}"),
        }
    }
}

/// `%XX` escapes to bytes, so scripts can name files with spaces and any UTF-8.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).expect("decoded name is UTF-8")
}

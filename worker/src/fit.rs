//! Keeping a terminal record within NATS's message size, whatever the job produced: a record that cannot be
//! written would hold its job's slot forever and never end it. Output kept in the record is budgeted before the
//! run (so output past it goes to the full log, as output past the cap does); what is still too large is
//! trimmed here, each cut counted in the record, with the stored manifest listing every file.

use fleet_shared::codec::msgpack_len;
use fleet_shared::record_store::Encoded;
use fleet_shared::JobRecord;

/// Room left for the message's headers and the KV layer's framing.
pub const HEADER_ROOM: usize = 16 * 1024;
/// Room kept for what only the run's end adds (files, resources, error text), when budgeting output.
const END_ROOM: usize = 128 * 1024;

/// The output cap for one stream of this job: the configured cap, or less when the job's own request leaves
/// less room in a record of `limit` bytes (both streams must fit).
pub fn output_cap(record: &JobRecord, configured: usize, limit: usize) -> usize {
    let request = msgpack_len(record);
    let room = limit.saturating_sub(request).saturating_sub(END_ROOM) / 2;
    configured.min(room)
}

/// Trims `record` until it encodes within `limit` bytes: first the output text and the answer, longest first (a
/// full log holds the output when the capture cut it; each cut is counted in `*_truncated_bytes`), then the listed files (counted in
/// `files_omitted`, all listed in the manifest). Returns it encoded, as it will be stored.
pub fn fit(mut record: JobRecord, limit: usize) -> Encoded {
    loop {
        let encoded = Encoded::new(record);
        let size = encoded.len();
        if size <= limit {
            return encoded;
        }
        record = encoded.into_record();
        let over = size - limit;
        let answer_len = record.answer.as_ref().map_or(0, String::len);
        let (text, truncated) = match record.answer.as_mut() {
            Some(answer) if answer_len > record.stdout.len().max(record.stderr.len()) => {
                (answer, &mut record.answer_truncated_bytes)
            }
            _ if record.stdout.len() >= record.stderr.len() => {
                (&mut record.stdout, &mut record.stdout_truncated_bytes)
            }
            _ => (&mut record.stderr, &mut record.stderr_truncated_bytes),
        };
        if !text.is_empty() {
            let half = text.len() / 2;
            *truncated += shorten(text, over.max(half));
        } else if let Some(_dropped) = record.files.pop() {
            record.files_omitted += 1;
        } else if !record.skipped_files.is_empty() {
            record.skipped_files.pop();
            record.skipped_files_omitted += 1;
        } else {
            tracing::error!(
                size,
                limit,
                "the record is too large even with its output and files trimmed"
            );
            return Encoded::new(record);
        }
    }
}

/// Drops at least `bytes` from the end of `text` (on a character boundary); how many were dropped.
fn shorten(text: &mut String, bytes: usize) -> u64 {
    let mut keep = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(keep) {
        keep -= 1;
    }
    let cut = text.len() - keep;
    text.truncate(keep);
    cut as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_shared::codec::to_msgpack;
    use fleet_shared::wire::{FileEntry, SkippedFile};

    fn big_record() -> JobRecord {
        let mut record = JobRecord::queued(fleet_shared::JobRequest::new(
            fleet_shared::wire::new_job_id(),
            "a",
            "m".repeat(900_000),
            chrono::Utc::now(),
        ));
        record.stdout = "é".repeat(40_000);
        record.stderr = "e".repeat(70_000);
        record.answer = Some("a".repeat(90_000));
        record.files = (0..2000)
            .map(|i| FileEntry {
                name: format!("{i:0>200}"),
                size: 1,
                sha256: "0".repeat(64),
                content_type: "text/plain".into(),
                location: format!("file:///x/{i:0>200}"),
                truncated: false,
            })
            .collect();
        record.skipped_files = vec![SkippedFile {
            name: "s".into(),
            size: 1,
            reason: "r".into(),
        }];
        record
    }

    #[test]
    fn an_oversized_record_is_trimmed_to_fit_and_counts_every_cut() {
        let record = big_record();
        let (out, err, files) = (record.stdout.len(), record.stderr.len(), record.files.len());
        let answer = record.answer.as_ref().map_or(0, String::len) as u64;
        let encoded = fit(record, 1024 * 1024 - HEADER_ROOM);
        assert!(encoded.len() <= 1024 * 1024 - HEADER_ROOM);
        assert_eq!(
            encoded.msgpack(),
            to_msgpack(encoded.record()),
            "the record's own encoding"
        );
        let record = encoded.into_record();
        assert_eq!(
            record.stdout.len() as u64 + record.stdout_truncated_bytes,
            out as u64
        );
        assert_eq!(
            record.stderr.len() as u64 + record.stderr_truncated_bytes,
            err as u64
        );
        let kept = record.answer.as_ref().map_or(0, String::len) as u64;
        assert_eq!(kept + record.answer_truncated_bytes, answer);
        assert!(
            record.answer_truncated_bytes > 0,
            "the longest text is cut first"
        );
        assert_eq!(
            record.files.len() as u64 + record.files_omitted,
            files as u64
        );
        assert_eq!(
            record.request.message.len(),
            900_000,
            "the request is kept whole"
        );
    }

    #[test]
    fn output_is_budgeted_by_what_the_request_leaves() {
        let record = big_record();
        let cap = output_cap(&record, 65536, 1024 * 1024 - HEADER_ROOM);
        assert!(cap < 65536, "{cap}");
        let mut small = JobRecord::queued(record.request.clone());
        small.request.message = "hi".into();
        assert_eq!(output_cap(&small, 65536, 1024 * 1024 - HEADER_ROOM), 65536);
        assert_eq!(msgpack_len(&record), to_msgpack(&record).len());
    }
}

//! Saving a job's files: one file by itself, several as one archive unpacked exactly as the record lists them.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{bail, Context, Result};
use fleet_shared::artifacts::is_safe_name;
use fleet_shared::JobRecord;

use super::http::Client;

impl Client {
    /// Saves every file the job stored under `dir`, keeping relative paths: several files come as one archive
    /// (one request instead of one per file), a single file by itself.
    pub async fn download(&self, record: &JobRecord, dir: &Path) -> Result<()> {
        if let Some(bad) = record.files.iter().find(|f| !is_safe_name(&f.name)) {
            bail!("refusing the unsafe file name `{}`", bad.name);
        }
        if record.files.len() > 1 {
            return self.download_archive(record, dir).await;
        }
        for file in &record.files {
            let target = dir.join(&file.name);
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            let path = format!(
                "/v1/jobs/{}/artifacts/{}",
                record.id,
                encode_path(&file.name)
            );
            let mut r = self.send(self.http.get(self.url(&path))).await?;
            let mut out = tokio::fs::File::create(&target)
                .await
                .with_context(|| format!("creating {}", target.display()))?;
            self.save(&mut r, &mut out, file.size, file.name.clone())
                .await?;
            if !self.json {
                eprintln!("saved {} ({} bytes)", target.display(), file.size);
            }
        }
        Ok(())
    }

    /// Writes a response body to `out`, with a progress bar on a terminal (plain lines when piped).
    async fn save(
        &self,
        r: &mut reqwest::Response,
        out: &mut tokio::fs::File,
        size: u64,
        label: String,
    ) -> Result<()> {
        let bar = (!self.json && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(size);
            bar.set_message(label);
            bar
        });
        while let Some(chunk) = r.chunk().await? {
            tokio::io::AsyncWriteExt::write_all(out, &chunk).await?;
            if let Some(bar) = &bar {
                bar.inc(chunk.len() as u64);
            }
        }
        // A tokio file writes in the background: wait for the bytes to land before going on (or exiting).
        tokio::io::AsyncWriteExt::flush(out).await?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        Ok(())
    }

    /// Streams `/artifacts.tar` into a temporary file, then unpacks exactly the files the record lists.
    async fn download_archive(&self, record: &JobRecord, dir: &Path) -> Result<()> {
        let total: u64 = record.files.iter().map(|f| f.size).sum();
        let path = format!("/v1/jobs/{}/artifacts.tar", record.id);
        let mut r = self.send(self.http.get(self.url(&path))).await?;
        let spool = tempfile::tempfile().context("creating a temporary file for the archive")?;
        let mut out = tokio::fs::File::from_std(spool);
        let label = format!("{} files", record.files.len());
        self.save(&mut r, &mut out, total, label).await?;
        let spool = out.into_std().await;
        let listed: std::collections::HashMap<String, u64> = record
            .files
            .iter()
            .map(|f| (f.name.clone(), f.size))
            .collect();
        let dir = dir.to_path_buf();
        let saved = tokio::task::spawn_blocking(move || unpack(spool, &dir, &listed)).await??;
        if !self.json {
            for (name, size) in saved {
                eprintln!("saved {name} ({size} bytes)");
            }
        }
        Ok(())
    }
}

/// Unpacks the regular files of a job's archive under `dir`, each only if the record lists it with that size.
fn unpack(
    mut spool: std::fs::File,
    dir: &Path,
    listed: &std::collections::HashMap<String, u64>,
) -> Result<Vec<(String, u64)>> {
    std::io::Seek::rewind(&mut spool)?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(spool));
    let mut saved = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = String::from_utf8(entry.path_bytes().into_owned())
            .context("a file name in the archive is not UTF-8")?;
        let size = entry.size();
        if !is_safe_name(&name) || listed.get(&name) != Some(&size) {
            bail!(
                "the archive holds `{name}` ({size} bytes), which the job's record does not list"
            );
        }
        let target = dir.join(&name);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = std::fs::File::create(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        std::io::copy(&mut entry, &mut out)?;
        saved.push((target.display().to_string(), size));
    }
    if saved.len() != listed.len() {
        bail!(
            "the archive held {} of the job's {} files",
            saved.len(),
            listed.len()
        );
    }
    Ok(saved)
}

/// Percent-encodes each part of a relative path for a URL, keeping the `/` between parts.
fn encode_path(name: &str) -> String {
    name.split('/')
        .map(|part| {
            part.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_are_encoded_part_by_part() {
        assert_eq!(super::encode_path("out/r é.txt"), "out/r%20%C3%A9.txt");
    }
}

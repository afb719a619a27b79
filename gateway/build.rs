//! Embeds the web console (`gateway/ui/`) in the binary: each file raw, brotli- and gzip-compressed, under a path named by the
//! hash of all of them, so browsers may cache assets for a year and still never run a stale mix after an upgrade.
//! `index.html` names that path through its `{{ASSETS}}` placeholder and is served uncached.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn main() {
    let ui = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir")).join("ui");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("out dir"));
    println!("cargo:rerun-if-changed={}", ui.display());
    let files = ui_files(&ui);
    let version = version_of(&files);
    let prefix = format!("/ui/{version}/");
    let mut table = String::from("&[\n");
    for (name, bytes) in &files {
        let bytes = if name == "index.html" {
            String::from_utf8(bytes.clone())
                .expect("index.html is UTF-8")
                .replace("{{ASSETS}}", &prefix)
                .into_bytes()
        } else {
            bytes.clone()
        };
        let raw = out.join(format!("ui-{name}"));
        std::fs::write(&raw, &bytes).expect("write asset");
        let gz = out.join(format!("ui-{name}.gz"));
        std::fs::write(&gz, gzip(&bytes)).expect("write gzipped asset");
        let br = out.join(format!("ui-{name}.br"));
        std::fs::write(&br, brotli(&bytes)).expect("write brotli asset");
        table.push_str(&format!(
            "    Asset {{ name: {name:?}, raw: include_bytes!({:?}), gzip: include_bytes!({:?}), brotli: include_bytes!({:?}) }},\n",
            raw.display().to_string(),
            gz.display().to_string(),
            br.display().to_string()
        ));
    }
    table.push(']');
    let code = format!(
        "/// The console's asset path: `/ui/<hash of every file>/`.\npub const PREFIX: &str = {prefix:?};\n\
         /// Every file of `gateway/ui/`, raw and compressed.\npub static ASSETS: &[Asset] = {table};\n"
    );
    std::fs::write(out.join("console_assets.rs"), code).expect("write asset table");
}

/// The files of `ui/` (one level: the console has no build step), sorted by name.
fn ui_files(ui: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(ui)
        .expect("gateway/ui exists")
        .map(|entry| entry.expect("ui entry").path())
        .filter(|path| path.is_file())
        .map(|path| {
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).expect("read ui file"))
        })
        .collect();
    files.sort();
    files
}

fn version_of(files: &[(String, Vec<u8>)]) -> String {
    let mut hash = Sha256::new();
    for (name, bytes) in files {
        hash.update(name.as_bytes());
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    }
    hex::encode(&hash.finalize()[..6])
}

/// Brotli at its best quality and a 4 MiB window: built once, served many times.
fn brotli(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = brotli::CompressorWriter::new(Vec::new(), 4096, 11, 22);
    encoder.write_all(bytes).expect("brotli");
    encoder.into_inner()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

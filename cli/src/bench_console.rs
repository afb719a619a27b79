//! `fleet bench --console`: how soon the web console is usable. Headless Chromium opens the console `--console-loads`
//! times, each in a fresh browser context (nothing cached), and the page itself records when the run form can be
//! used — an agent to pick and a message box to write in — as milliseconds since navigation started
//! (`performance.now()`). The bytes transferred are Chromium's own count of what came over the wire, headers
//! included.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::bench_measure::{median, verdict};
use crate::cdp::{Browser, Tab};

/// Installed before the console's own scripts: resolves with the moment the run form became usable.
const READY_PROBE: &str = r#"
window.__fleetUsable = new Promise((resolve) => {
  const usable = () => document.querySelector('#run-agent option[value]') && document.querySelector('#run-message');
  const observer = new MutationObserver(() => {
    if (usable()) { observer.disconnect(); resolve(performance.now()); }
  });
  observer.observe(document, { childList: true, subtree: true });
});
"#;

const INTERACTIVE_TARGET_MS: f64 = 1000.0;
const FIRST_LOAD_TARGET_BYTES: f64 = 150.0 * 1024.0;

/// One cold load of the console.
struct Load {
    usable_ms: f64,
    transferred: f64,
}

pub fn run(chromium: &Path, base: &str, loads: usize) -> Result<()> {
    let mut browser = Browser::launch(chromium)?;
    let mut measured = Vec::with_capacity(loads);
    for _ in 0..loads {
        measured.push(load(&mut browser, &format!("{base}/"))?);
    }
    let usable = || measured.iter().map(|l| l.usable_ms);
    let worst = usable().fold(0.0, f64::max);
    let bytes = median(measured.iter().map(|l| l.transferred));
    println!();
    println!("console, {loads} cold loads in headless Chromium (a fresh browser context each)");
    println!(
        "  run form usable after navigation     p50 {:>7.0} ms  worst {worst:>7.0} ms",
        median(usable())
    );
    println!(
        "  first load transferred                   {:>7.1} KB",
        bytes / 1024.0
    );
    println!(
        "{} console usable ≤ {INTERACTIVE_TARGET_MS:.0} ms after navigation (worst of {loads})",
        verdict(worst <= INTERACTIVE_TARGET_MS)
    );
    println!(
        "{} console first load ≤ {:.0} KB",
        verdict(bytes <= FIRST_LOAD_TARGET_BYTES),
        FIRST_LOAD_TARGET_BYTES / 1024.0
    );
    Ok(())
}

fn load(browser: &mut Browser, url: &str) -> Result<Load> {
    let tab = browser.open_tab()?;
    let session = Some(tab.session());
    let second = Duration::from_secs(10);
    // Without the page domain enabled the probe below is not installed.
    browser.call(session, "Page.enable", json!({}), second)?;
    browser.call(session, "Network.enable", json!({}), second)?;
    let probe = json!({ "source": READY_PROBE });
    browser.call(
        session,
        "Page.addScriptToEvaluateOnNewDocument",
        probe,
        second,
    )?;
    browser.take_events();
    browser.call(session, "Page.navigate", json!({ "url": url }), second)?;
    let usable_ms = wait_usable(browser, &tab)?;
    // What the page asks for right after it is usable still counts as its first load.
    std::thread::sleep(Duration::from_millis(500));
    browser.call(
        session,
        "Runtime.evaluate",
        json!({ "expression": "0" }),
        second,
    )?;
    let transferred = bytes_received(&browser.take_events(), tab.session());
    browser.close_tab(tab)?;
    Ok(Load {
        usable_ms,
        transferred,
    })
}

/// Waits for the console's document (the blank one before it has no probe) and its usable moment.
fn wait_usable(browser: &mut Browser, tab: &Tab) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let params = json!({
        "expression": "window.__fleetUsable ?? null",
        "awaitPromise": true,
        "returnByValue": true,
    });
    while Instant::now() < deadline {
        // An answer from a document being replaced is an error or null; the console's is a number.
        let answer = browser.call(
            Some(tab.session()),
            "Runtime.evaluate",
            params.clone(),
            Duration::from_secs(30),
        );
        if let Some(ms) = answer.ok().and_then(|a| a["result"]["value"].as_f64()) {
            return Ok(ms);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("the console's run form was not usable within 30 s")
}

/// The bytes of every response `session` finished receiving, as Chromium counted them on the wire.
fn bytes_received(events: &[Value], session: &str) -> f64 {
    events
        .iter()
        .filter(|e| e["method"] == "Network.loadingFinished" && e["sessionId"] == session)
        .filter_map(|e| e["params"]["encodedDataLength"].as_f64())
        .sum()
}

/// Where Chromium is, or why the part cannot run.
pub fn find_chromium(given: &Path) -> Result<&Path> {
    given
        .is_file()
        .then_some(given)
        .with_context(|| format!("--console needs Chromium; none at {} (Debian: apt-get install chromium; or pass --chromium PATH)", given.display()))
}

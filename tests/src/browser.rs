//! A real browser for the portal's tests: Debian's `chromium`, driven headless through
//! `chromedriver` (package `chromium-driver`) over WebDriver with `fantoccini`. Each
//! [`Browser`] has its own driver process on a free loopback port and a fresh profile
//! directory. The driver leads a process group of its own, which Chromium and every process it
//! starts join: closing or dropping the [`Browser`] — also while a failed test unwinds —
//! kills the whole group and removes the profile.
//!
//! Chromium gets the flags that keep it off the network (this machine has none besides the
//! loopback): no background networking, component updates, sync or QUIC.

use std::{path::PathBuf, process::Stdio, time::Duration};

use fantoccini::{
    Client, ClientBuilder, Locator,
    actions::{InputSource, KeyAction, KeyActions},
    elements::Element,
    key::Key,
};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// The Chromium binary (override with `RELAY_TEST_CHROMIUM`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// The driver binary (override with `RELAY_TEST_CHROMEDRIVER`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Longest wait for a page condition.
pub const WAIT: Duration = Duration::from_secs(20);

/// A headless Chromium session.
#[derive(Debug)]
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    driver: Child,
    processes: Processes,
}

/// The guard of a browser's processes: chromedriver's process group (the driver, Chromium,
/// its zygotes, renderers and helpers; Chromium's crash handlers leave the group but exit
/// with the browser) and the profile directory. Dropping it kills the group and removes the
/// directory, so a panic between starting the driver and closing the browser leaves nothing
/// running.
#[derive(Debug)]
struct Processes {
    group: Option<u32>,
    profile: PathBuf,
}

impl Drop for Processes {
    fn drop(&mut self) {
        if let Some(group) = self.group {
            // `kill -KILL -- -PGID`: every process of the group (the crate forbids the
            // `unsafe` a direct `kill(2)` would need).
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium (1280×900) with a fresh profile.
    ///
    /// # Panics
    /// When either cannot be started within 30 s.
    pub async fn start() -> Self {
        let chromium = std::env::var("RELAY_TEST_CHROMIUM").unwrap_or_else(|_| CHROMIUM.into());
        let chromedriver =
            std::env::var("RELAY_TEST_CHROMEDRIVER").unwrap_or_else(|_| CHROMEDRIVER.into());
        let profile = std::env::temp_dir().join(format!(
            "relay-chromium-{}",
            relay_shared::ids::new_id("p").to_lowercase()
        ));
        std::fs::create_dir_all(&profile).expect("create the browser profile directory");
        let mut processes = Processes {
            group: None,
            profile,
        };
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A group of its own (id = its pid), which the browser it starts joins.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {chromedriver} (package chromium-driver): {e}")
            });
        processes.group = driver.id();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--hide-scrollbars",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", processes.profile.display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object literal")
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    panic!("no WebDriver session from {chromedriver} with {chromium}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        Self {
            client,
            driver,
            processes,
        }
    }

    /// The process group of the driver, the browser and its helpers.
    pub fn process_group(&self) -> Option<u32> {
        self.processes.group
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigation");
    }

    /// Waits until the page (after redirects and script-driven navigation) is the one
    /// named `page` (`<body data-page=…>`).
    ///
    /// # Panics
    /// When another page stays, with its name and URL.
    pub async fn wait_page(&self, page: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let current = self.page().await;
            if current.as_deref() == Some(page) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let url = self.client.current_url().await.map(|u| u.to_string());
                panic!("expected page {page}, still on {current:?} at {url:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks `css` (a button that submits a form) and waits for the page it leads to, named
    /// `page`: a new document, even when it has the same name as the one clicked on (a form
    /// that posts and redirects back to its own page).
    ///
    /// # Panics
    /// When no new page named `page` comes within [`WAIT`].
    pub async fn submit(&self, css: &str, page: &str) {
        // `page()` reads nothing from a document carrying this mark: only the next one counts.
        self.eval("window.relayTestStale = true; return null;")
            .await;
        self.click(css).await;
        self.wait_page(page).await;
    }

    /// The `data-page` of the current page, once it has one (not of a page [`Browser::submit`]
    /// is leaving).
    pub async fn page(&self) -> Option<String> {
        self.client
            .execute(
                "return (document.body && !window.relayTestStale) ? document.body.getAttribute('data-page') : null;",
                vec![],
            )
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
    }

    /// The element matching the CSS selector.
    ///
    /// # Panics
    /// When there is none within [`WAIT`].
    pub async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    /// Every element matching the CSS selector now.
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .expect("find elements")
    }

    /// The visible text of the element matching the CSS selector.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("element text")
    }

    /// Types `text` into the input matching `css` (after clearing it).
    pub async fn fill(&self, css: &str, text: &str) {
        let input = self.find(css).await;
        input.clear().await.expect("clear the input");
        input.send_keys(text).await.expect("type into the input");
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    /// Runs `script` in the page and returns its value.
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .expect("script runs")
    }

    /// What a keyboard user or a reader with low vision would meet on the current page:
    /// inputs without a label, links and buttons without a name, images without `alt`, a
    /// positive `tabindex`, text below WCAG AA contrast (4.5:1, 3:1 when large) against the
    /// background it is drawn on, and visible controls that Tab never reaches. Empty when
    /// the page passes.
    pub async fn accessibility_problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = serde_json::from_value(self.eval(AUDIT).await)
            .expect("the audit returns a list of strings");
        let controls = self
            .eval(MARK_CONTROLS)
            .await
            .as_u64()
            .expect("the number of controls");
        // Tab from the top of the page (a focused marker before everything) until every
        // control was focused, noting which were. A date-time input takes a Tab per part
        // (day, month, year, hour, …), hence the generous number of presses.
        let mut reached = std::collections::BTreeSet::new();
        for _ in 0..controls * 12 + 10 {
            if reached.len() as u64 == controls {
                break;
            }
            let tab = KeyActions::new("keyboard".into())
                .then(KeyAction::Down {
                    value: Key::Tab.into(),
                })
                .then(KeyAction::Up {
                    value: Key::Tab.into(),
                });
            self.client.perform_actions(tab).await.expect("press Tab");
            if let Some(i) = self
                .eval("const a = document.activeElement; return a && a.dataset.audit ? Number(a.dataset.audit) : null;")
                .await
                .as_u64()
            {
                reached.insert(i);
            }
        }
        let _ = self.client.release_actions().await;
        let missed: Vec<String> = serde_json::from_value(
            self.eval(&format!(
                "document.getElementById('audit-start')?.remove(); document.activeElement?.blur(); \
                 window.scrollTo(0, 0); const reached = {}; \
                 return [...document.querySelectorAll('[data-audit]')] \
                   .filter(e => !reached.includes(Number(e.dataset.audit))) \
                   .map(e => 'not reachable by Tab: ' + e.outerHTML.slice(0, 120));",
                json!(reached)
            ))
            .await,
        )
        .expect("a list of strings");
        problems.extend(missed);
        problems
    }

    /// Saves a PNG of the viewport to `dir/name.png` (the whole page height, up to 2400 px).
    pub async fn screenshot(&self, dir: &std::path::Path, name: &str) {
        let height = self
            .eval("return Math.ceil(document.documentElement.scrollHeight);")
            .await
            .as_u64()
            .unwrap_or(900)
            .clamp(600, 2400);
        let height = u32::try_from(height).unwrap_or(900);
        // The window size includes the browser's frame: grow the window by what the frame
        // takes so the viewport shows the whole page.
        let _ = self.client.set_window_size(1280, height).await;
        let inner = self
            .eval("return window.innerHeight;")
            .await
            .as_u64()
            .and_then(|h| u32::try_from(h).ok())
            .unwrap_or(height);
        if inner < height {
            let _ = self
                .client
                .set_window_size(1280, height + (height - inner))
                .await;
        }
        let png = self.client.screenshot().await.expect("screenshot");
        let _ = self.client.set_window_size(1280, 900).await;
        std::fs::create_dir_all(dir).expect("create the screenshot directory");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write the screenshot");
    }

    /// Ends the session, then the browser's processes (dropping the [`Browser`] without
    /// closing it kills them too).
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
    }
}

/// The static part of [`Browser::accessibility_problems`], in the page.
const AUDIT: &str = r#"
const problems = [];
// Rendered: not display:none, not visibility:hidden, not inside a closed <details>.
const visible = e => e.checkVisibility({ visibilityProperty: true });
const snippet = e => e.outerHTML.slice(0, 120);
if (!document.documentElement.lang) problems.push('no lang on <html>');
if (!document.title.trim()) problems.push('no <title>');
for (const e of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
  if (visible(e) && !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
      && !e.getAttribute('aria-labelledby')) problems.push('no label: ' + snippet(e));
}
for (const e of document.querySelectorAll('a[href], button, summary')) {
  if (visible(e) && !e.textContent.trim() && !e.getAttribute('aria-label'))
    problems.push('no name: ' + snippet(e));
}
for (const e of document.querySelectorAll('img:not([alt])')) problems.push('no alt: ' + snippet(e));
for (const e of document.querySelectorAll('[tabindex]'))
  if (e.tabIndex > 0) problems.push('positive tabindex: ' + snippet(e));
const rgba = s => { const m = s.match(/[\d.]+/g).map(Number); return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; };
const luminance = c => {
  const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
};
// The colour an element's text is drawn on: its and its ancestors' backgrounds composited
// from the nearest opaque one (white at the bottom).
const backdrop = e => {
  const layers = [];
  for (let n = e; n; n = n.parentElement) {
    const c = rgba(getComputedStyle(n).backgroundColor);
    if (c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
  }
  let out = [255, 255, 255];
  for (const c of layers.reverse()) out = out.map((v, i) => c[i] * c[3] + v * (1 - c[3]));
  return out;
};
for (const e of document.querySelectorAll('body *')) {
  if (!visible(e) || e.closest(':disabled')) continue;
  if (![...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
  const style = getComputedStyle(e);
  const bg = backdrop(e);
  const fg = rgba(style.color);
  const text = [0, 1, 2].map(i => fg[i] * fg[3] + bg[i] * (1 - fg[3]));
  const [a, b] = [luminance(text), luminance(bg)];
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  const size = parseFloat(style.fontSize);
  const large = size >= 24 || (parseInt(style.fontWeight, 10) >= 700 && size >= 18.66);
  const need = large ? 3 : 4.5;
  if (ratio < need) problems.push(`contrast ${ratio.toFixed(2)} < ${need}: <${e.tagName.toLowerCase()}> "${e.textContent.trim().slice(0, 40)}"`);
}
return problems;
"#;

/// Numbers the visible, enabled controls (`data-audit`) and puts a focused marker before
/// everything, so that the next Tab goes to the page's first control; returns their count.
const MARK_CONTROLS: &str = r#"
// Rendered: not display:none, not visibility:hidden, not inside a closed <details>.
const visible = e => e.checkVisibility({ visibilityProperty: true });
const controls = [...document.querySelectorAll(
  'a[href], button, input:not([type=hidden]), select, textarea, summary, [tabindex]'
)].filter(e => !e.disabled && e.tabIndex >= 0 && visible(e));
controls.forEach((e, i) => { e.dataset.audit = i; });
const start = document.createElement('span');
start.id = 'audit-start';
start.tabIndex = -1;
document.body.prepend(start);
start.focus();
return controls.length;
"#;

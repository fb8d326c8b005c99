//! A real browser for the portal's tests: Debian's `chromium`, driven headless through
//! `chromedriver` (package `chromium-driver`) over WebDriver with `fantoccini`. Each
//! [`Browser`] has its own driver process on a free loopback port and a fresh profile
//! directory; both go away when it is closed or dropped.
//!
//! Chromium gets the flags that keep it off the network (this machine has none besides the
//! loopback): no background networking, component updates, sync or QUIC.

use std::{path::PathBuf, process::Stdio, time::Duration};

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
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
    profile: PathBuf,
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
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {chromedriver} (package chromium-driver): {e}")
            });
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
                    format!("--user-data-dir={}", profile.display()),
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
            profile,
        }
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

    /// The `data-page` of the current page, once it has one.
    pub async fn page(&self) -> Option<String> {
        self.client
            .execute(
                "return document.body ? document.body.getAttribute('data-page') : null;",
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

    /// Saves a PNG of the viewport to `dir/name.png` (the whole page height, up to 2400 px).
    pub async fn screenshot(&self, dir: &std::path::Path, name: &str) {
        let height = self
            .eval("return Math.ceil(document.documentElement.scrollHeight);")
            .await
            .as_u64()
            .unwrap_or(900)
            .clamp(600, 2400);
        let height = u32::try_from(height).unwrap_or(900);
        // The window size includes the browser's frame, which headless Chromium does not draw.
        let _ = self.client.set_window_size(1280, height).await;
        let png = self.client.screenshot().await.expect("screenshot");
        let _ = self.client.set_window_size(1280, 900).await;
        std::fs::create_dir_all(dir).expect("create the screenshot directory");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write the screenshot");
    }

    /// Ends the session, the browser and the driver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // `kill_on_drop` ends the driver (and with it the browser); the profile goes too.
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

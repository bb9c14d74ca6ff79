//! A headless Chromium driven through WebDriver, for the tests of what a person sees.
//!
//! A small W3C WebDriver client over the workspace's `reqwest` (JSON over HTTP to a
//! `chromedriver` child process): new session, navigate, find elements by CSS, send keys
//! (a local path, to an `<input type=file>`), click, attribute / property / text, execute
//! script, window size, screenshot, delete session. Not `fantoccini`: built without TLS
//! it still measured about two minutes of extra build on this project's two cores (a
//! second ICU stack, two `cookie`s, `http` 0.2, the `webdriver` crate), over the rule's
//! ~90 s; the little this needs fits in one file.
//!
//! Debian's `chromium` and `chromium-driver` packages (`make test` installs them when
//! missing). [`Browser::start`] returns `None`, loudly, when they are not there or
//! `IMAGEJOBS_BROWSER=skip`; `IMAGEJOBS_REQUIRE_BROWSER=1` turns that into a panic.
//!
//! ```no_run
//! # async fn example() {
//! use std::time::Duration;
//! use imagejobs_testkit::browser::Browser;
//! let Some(b) = Browser::start().await else { return };
//! b.goto("http://127.0.0.1:9000/").await;
//! b.find("textarea#token").await.send_keys("a token").await;
//! b.find("button#token-save").await.click().await;
//! b.wait_for("#app:not([hidden])", Duration::from_secs(10)).await;
//! b.screenshot("target/screenshots/example.png").await;
//! # }
//! ```

use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How often the waits check again.
const EVERY: Duration = Duration::from_millis(50);
/// How long chromedriver has to answer `/status` ready after it starts.
const DRIVER_READY: Duration = Duration::from_secs(20);
/// The W3C key of an element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How much of the page's HTML a failed wait prints.
const PAGE_EXCERPT: usize = 3000;

/// An error that chromedriver (or the way to it) reported for one command.
#[derive(Debug, Clone)]
pub struct WebDriverError {
    /// The W3C error code (`no such element`, `javascript error`, ...), or `http` when
    /// the request itself failed.
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // chromedriver's messages carry a long "(Session info: ...)" tail: the first line
        // says what went wrong.
        let first = self.message.lines().next().unwrap_or_default();
        write!(f, "{}: {first}", self.error)
    }
}

impl std::error::Error for WebDriverError {}

impl WebDriverError {
    fn http(e: impl std::fmt::Display) -> WebDriverError {
        WebDriverError {
            error: "http".into(),
            message: e.to_string(),
        }
    }

    fn is_no_such_element(&self) -> bool {
        self.error == "no such element"
    }
}

/// The `value` of a WebDriver response, or its error (W3C: an error's `value` has
/// `error` and `message`, with a 4xx/5xx status).
fn parse_response(status: u16, body: &str) -> Result<Value, WebDriverError> {
    let v: Value = serde_json::from_str(body).map_err(|e| WebDriverError {
        error: "http".into(),
        message: format!("HTTP {status}, not JSON ({e}): {body}"),
    })?;
    let value = v.get("value").cloned().unwrap_or(Value::Null);
    if status < 400 {
        // A script may well return an object with an `error` key: only the status says.
        return Ok(value);
    }
    Err(match value.get("error").and_then(Value::as_str) {
        Some(error) => WebDriverError {
            error: error.to_owned(),
            message: value["message"].as_str().unwrap_or_default().to_owned(),
        },
        None => WebDriverError {
            error: "http".into(),
            message: format!("HTTP {status}: {body}"),
        },
    })
}

/// The id in a W3C element reference.
fn element_id(v: &Value) -> Option<String> {
    v.get(ELEMENT_KEY)?.as_str().map(str::to_owned)
}

/// JavaScript's truthiness of a script's result.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// The first `max` characters of `s`, saying how much was left out.
fn excerpt(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((i, _)) => format!("{}... ({} more bytes)", &s[..i], s.len() - i),
    }
}

/// `name` on the `PATH`, as an executable file.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A free TCP port on 127.0.0.1 (free now: the listener is dropped before returning).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// No browser for this run: `None` with a loud message, or a panic under
/// `IMAGEJOBS_REQUIRE_BROWSER=1`.
fn unavailable(why: &str) -> Option<Browser> {
    let required = std::env::var("IMAGEJOBS_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let bar = "!".repeat(78);
    if required {
        panic!("{why}; IMAGEJOBS_REQUIRE_BROWSER=1, so this is a failure, not a skip");
    }
    eprintln!("\n{bar}\n!! {why}\n!! the dashboard's browser test is SKIPPED (IMAGEJOBS_REQUIRE_BROWSER=1 makes this a failure)\n{bar}\n");
    None
}

/// A headless Chromium session through a private `chromedriver`; both end when dropped
/// (the session is deleted, which closes Chromium, then chromedriver is killed).
pub struct Browser {
    http: reqwest::Client,
    port: u16,
    /// `<driver_url>/session/<id>`
    session: String,
    session_id: String,
    driver: Child,
    /// chromedriver's log and Chromium's profile.
    dir: PathBuf,
    log: PathBuf,
}

/// One element of the page, as the session knows it (stale once the page replaces it:
/// find it again rather than keep it across changes).
#[derive(Clone)]
pub struct Element<'b> {
    browser: &'b Browser,
    id: String,
    /// How it was found, for messages.
    css: String,
}

impl std::fmt::Debug for Element<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Element({})", self.css)
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session, or returns `None` (loudly)
    /// when the browser is unavailable: `IMAGEJOBS_BROWSER=skip`, or `chromium` /
    /// `chromedriver` not on the `PATH`. With `IMAGEJOBS_REQUIRE_BROWSER=1` those panic.
    /// A browser that is there but does not start is a failure, never a skip.
    pub async fn start() -> Option<Browser> {
        if std::env::var("IMAGEJOBS_BROWSER").is_ok_and(|v| v == "skip") {
            return unavailable(
                "IMAGEJOBS_BROWSER=skip (scripts/test.sh could not install Debian's chromium and chromium-driver)",
            );
        }
        let Some(chromium) = on_path("chromium").or_else(|| on_path("chromium-browser")) else {
            return unavailable("chromium not found: install Debian's chromium package");
        };
        let Some(chromedriver) = on_path("chromedriver") else {
            return unavailable("chromedriver not found: install Debian's chromium-driver package");
        };
        Some(Self::launch(&chromedriver, &chromium).await)
    }

    /// Starts `chromedriver` and a session of `chromium`; panics when either fails.
    pub async fn launch(chromedriver: &Path, chromium: &Path) -> Browser {
        let dir = std::env::temp_dir().join(format!("imagejobs-browser-{}", uuid::Uuid::new_v4()));
        let profile = dir.join("profile");
        std::fs::create_dir_all(&profile)
            .unwrap_or_else(|e| panic!("creating {}: {e}", profile.display()));
        let log = dir.join("chromedriver.log");
        // reqwest is built without a crypto provider of its own (plain HTTP here, but
        // the client needs one to be built).
        imagejobs_core::tls::install_crypto();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client");

        // The free port may be taken between our check and chromedriver's bind: try again.
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port().expect("a free port on 127.0.0.1");
            let out = std::fs::File::create(&log)
                .unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
            let err = out.try_clone().expect("the log file, twice");
            let mut driver = Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
            let driver_url = format!("http://127.0.0.1:{port}");
            match wait_driver_ready(&http, &driver_url, &mut driver).await {
                Ok(()) => {
                    let (session_id, session) =
                        new_session(&http, &driver_url, chromium, &profile)
                            .await
                            .unwrap_or_else(|e| {
                                panic!(
                                    "chromedriver did not open a Chromium session ({e}); chromedriver's log: {}\n{}",
                                    log.display(),
                                    std::fs::read_to_string(&log).unwrap_or_default()
                                )
                            });
                    return Browser {
                        http,
                        port,
                        session,
                        session_id,
                        driver,
                        dir,
                        log,
                    };
                }
                Err(e) => {
                    let _ = driver.kill().await;
                    last = format!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
                }
            }
        }
        panic!("chromedriver did not start: {last}");
    }

    /// chromedriver's log (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `POST`/`GET`/`DELETE` `<session><path>`, with `body` as JSON for a `POST`.
    async fn cmd(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let mut req = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(WebDriverError::http)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(WebDriverError::http)?;
        parse_response(status, &text)
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, WebDriverError> {
        self.cmd(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Result<Value, WebDriverError> {
        self.cmd(reqwest::Method::GET, path, None).await
    }

    /// Navigates to `url` and returns when the page has loaded.
    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url }))
            .await
            .unwrap_or_else(|e| panic!("navigating to {url}: {e}"));
    }

    /// The page's URL now.
    pub async fn current_url(&self) -> String {
        self.get("/url")
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The first element matching `css`, if any.
    pub async fn try_find(&self, css: &str) -> Result<Option<Element<'_>>, WebDriverError> {
        let found = self
            .post("/element", json!({ "using": "css selector", "value": css }))
            .await;
        match found {
            Ok(v) => Ok(element_id(&v).map(|id| Element {
                browser: self,
                id,
                css: css.to_owned(),
            })),
            Err(e) if e.is_no_such_element() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The first element matching `css`; panics (with the page) when there is none.
    pub async fn find(&self, css: &str) -> Element<'_> {
        match self.try_find(css).await {
            Ok(Some(el)) => el,
            Ok(None) => panic!("no element matches {css:?}\n{}", self.page_state().await),
            Err(e) => panic!("finding {css:?}: {e}\n{}", self.page_state().await),
        }
    }

    /// Every element matching `css` (none is an empty list).
    pub async fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        let v = self
            .post(
                "/elements",
                json!({ "using": "css selector", "value": css }),
            )
            .await
            .unwrap_or_else(|e| panic!("finding all {css:?}: {e}"));
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(element_id)
            .map(|id| Element {
                browser: self,
                id,
                css: css.to_owned(),
            })
            .collect()
    }

    /// Waits up to `deadline` for an element matching `css`.
    pub async fn wait_for(&self, css: &str, deadline: Duration) -> Element<'_> {
        self.wait_until(
            deadline,
            &format!("an element matching {css:?}"),
            || async { self.try_find(css).await.ok().flatten() },
        )
        .await
    }

    /// Polls `check` until it returns `Some`, or panics after `deadline` naming `what`
    /// and showing the page as it is then (URL, HTML, console).
    pub async fn wait_until<T, F, Fut>(&self, deadline: Duration, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let polled = crate::poll::try_eventually(deadline, what, || {
            let next = check();
            async move { Ok(next.await) }
        })
        .await;
        match polled {
            Ok(v) => v,
            Err(e) => panic!("{e}\n{}", self.page_state().await),
        }
    }

    /// Runs `script` (a function body: `return ...`) until its result is truthy, and
    /// returns that result. A script that throws counts as not yet (an element not there
    /// yet), and the last error is in the panic message.
    pub async fn wait_script(&self, deadline: Duration, what: &str, script: &str) -> Value {
        let end = Instant::now() + deadline;
        let last = loop {
            let last = match self.try_execute(script, vec![]).await {
                Ok(v) if truthy(&v) => return v,
                Ok(v) => format!("the script returned {v}"),
                Err(e) => format!("the script failed: {e}"),
            };
            if Instant::now() > end {
                break last;
            }
            tokio::time::sleep(EVERY).await;
        };
        panic!(
            "timed out after {deadline:?} waiting for {what} ({last}; script: {script})\n{}",
            self.page_state().await
        )
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`, elements given as
    /// [`Element::as_arg`]) in the page and returns what it returns.
    pub async fn try_execute(
        &self,
        script: &str,
        args: Vec<Value>,
    ) -> Result<Value, WebDriverError> {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// [`Browser::try_execute`], panicking (with the page) when the script fails.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        match self.try_execute(script, args).await {
            Ok(v) => v,
            Err(e) => panic!(
                "script failed: {e}\nscript: {script}\n{}",
                self.page_state().await
            ),
        }
    }

    /// Resizes the window (its outer size) to `width` x `height`.
    pub async fn set_window_size(&self, width: u32, height: u32) {
        self.post("/window/rect", json!({ "width": width, "height": height }))
            .await
            .unwrap_or_else(|e| panic!("resizing the window to {width}x{height}: {e}"));
    }

    /// The page as PNG bytes.
    pub async fn try_screenshot_png(&self) -> Result<Vec<u8>, WebDriverError> {
        let v = self.get("/screenshot").await?;
        let b64 = v.as_str().ok_or_else(|| WebDriverError {
            error: "http".into(),
            message: format!("a screenshot that is not a string: {v}"),
        })?;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| WebDriverError::http(format!("a screenshot not in base64: {e}")))
    }

    /// Saves the page as a PNG at `path` (creating its folders) and returns the path.
    pub async fn try_screenshot(&self, path: impl AsRef<Path>) -> anyhow::Result<PathBuf> {
        let path = path.as_ref();
        let png = self.try_screenshot_png().await?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, png)?;
        Ok(path.to_owned())
    }

    /// [`Browser::try_screenshot`], panicking when it fails; prints where it went.
    pub async fn screenshot(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        let saved = self
            .try_screenshot(path)
            .await
            .unwrap_or_else(|e| panic!("screenshot to {}: {e}", path.display()));
        eprintln!("screenshot: {}", saved.display());
        saved
    }

    /// What the browser's console said since the last call (Chromium's `browser` log:
    /// `console.*` calls, uncaught errors, failed requests), one line per entry.
    pub async fn console(&self) -> Vec<String> {
        let Ok(v) = self.post("/se/log", json!({ "type": "browser" })).await else {
            return vec![];
        };
        v.as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "{} {}",
                    e["level"].as_str().unwrap_or("?"),
                    e["message"].as_str().unwrap_or_default()
                )
            })
            .collect()
    }

    /// The page now, for failure messages: URL, an excerpt of its HTML, the console, and
    /// where chromedriver's log is.
    pub async fn page_state(&self) -> String {
        let url = self.current_url().await;
        let html = self
            .try_execute(
                "return document.documentElement ? document.documentElement.outerHTML : ''",
                vec![],
            )
            .await
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|e| format!("(no HTML: {e})"));
        let console = self.console().await;
        format!(
            "--- the page at {url} ---\n{}\n--- its console ---\n{}\n--- chromedriver's log: {} ---",
            excerpt(&html, PAGE_EXCERPT),
            if console.is_empty() {
                "(nothing)".to_owned()
            } else {
                console.join("\n")
            },
            self.log.display()
        )
    }

    /// A guard that saves a screenshot at `path` if the test panics while it lives, so
    /// that a failure's log points at what the page showed. Keep it in a variable.
    pub fn screenshot_on_panic(&self, path: impl Into<PathBuf>) -> PanicScreenshot<'_> {
        PanicScreenshot {
            browser: self,
            path: path.into(),
        }
    }

    /// Ends the session (Chromium exits) and chromedriver; what dropping does, awaited.
    pub async fn quit(mut self) {
        let _ = self.cmd(reqwest::Method::DELETE, "", None).await;
        self.session_id.clear();
        let _ = self.driver.kill().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Drop cannot await: end the session with a plain blocking request, so that
        // chromedriver closes Chromium before it is killed (killed first, it would leave
        // Chromium running).
        if !self.session_id.is_empty() {
            let _ = blocking_request(
                self.port,
                "DELETE",
                &format!("/session/{}", self.session_id),
            );
        }
        let _ = self.driver.start_kill();
        if std::thread::panicking() {
            eprintln!(
                "the browser's files are kept: {} (chromedriver's log: {})",
                self.dir.display(),
                self.log.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One request to chromedriver over a plain blocking socket, for `Drop`s (which cannot
/// await, and may run while the runtime is stuck in a panic): its status and body.
fn blocking_request(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    // Read until the answer is complete, not to EOF: chromedriver may keep the
    // connection open despite `Connection: close`.
    let mut answer = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf)?;
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if n == 0 || is_complete(&text) {
            return parse_http(&text)
                .ok_or_else(|| std::io::Error::other("a malformed HTTP answer from chromedriver"));
        }
    }
}

/// Whether `answer` holds a whole HTTP/1.1 answer (by its `Content-Length`, or the last
/// chunk).
fn is_complete(answer: &str) -> bool {
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        return false;
    };
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_ascii_lowercase())
        })
    };
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        return body.len() >= len;
    }
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return body.ends_with("0\r\n\r\n");
    }
    false
}

/// The status and body of an HTTP/1.1 answer read to its end (`Connection: close`),
/// chunked or not.
fn parse_http(answer: &str) -> Option<(u16, String)> {
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Some((status, body.to_owned()));
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some((status, out));
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// Saves a screenshot of `browser` at `path` when dropped during a panic (see
/// [`Browser::screenshot_on_panic`]).
pub struct PanicScreenshot<'b> {
    browser: &'b Browser,
    path: PathBuf,
}

impl Drop for PanicScreenshot<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let saved = blocking_request(
            self.browser.port,
            "GET",
            &format!("/session/{}/screenshot", self.browser.session_id),
        )
        .map_err(|e| e.to_string())
        .and_then(|(status, body)| parse_response(status, &body).map_err(|e| e.to_string()))
        .and_then(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .map_err(|e| e.to_string())
        })
        .and_then(|png| {
            if let Some(parent) = self.path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::write(&self.path, png).map_err(|e| e.to_string())
        });
        match saved {
            Ok(()) => eprintln!("the test failed; the page then: {}", self.path.display()),
            Err(e) => eprintln!("the test failed, and its screenshot did not save: {e}"),
        }
    }
}

/// Polls chromedriver's `/status` until it says ready, or fails when the process exits
/// or [`DRIVER_READY`] passes.
async fn wait_driver_ready(
    http: &reqwest::Client,
    url: &str,
    driver: &mut Child,
) -> anyhow::Result<()> {
    let end = Instant::now() + DRIVER_READY;
    loop {
        if let Some(status) = driver.try_wait()? {
            anyhow::bail!("chromedriver exited ({status})");
        }
        if let Ok(resp) = http.get(format!("{url}/status")).send().await {
            let v: Value = resp.json().await.unwrap_or_default();
            if v["value"]["ready"] == true {
                return Ok(());
            }
        }
        if Instant::now() > end {
            anyhow::bail!("chromedriver's {url}/status not ready after {DRIVER_READY:?}");
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// The capabilities of a session: headless Chromium at `chromium` with its profile in
/// `profile`, and its console kept for [`Browser::console`].
fn capabilities(chromium: &Path, profile: &Path) -> Value {
    json!({
        "capabilities": {
            "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium.display().to_string(),
                    "args": [
                        "--headless=new",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--window-size=1280,900",
                        format!("--user-data-dir={}", profile.display()),
                    ],
                },
                "goog:loggingPrefs": { "browser": "ALL" },
            }
        }
    })
}

/// Opens a session; returns its id and its URL.
async fn new_session(
    http: &reqwest::Client,
    driver_url: &str,
    chromium: &Path,
    profile: &Path,
) -> Result<(String, String), WebDriverError> {
    let resp = http
        .post(format!("{driver_url}/session"))
        .json(&capabilities(chromium, profile))
        .send()
        .await
        .map_err(WebDriverError::http)?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(WebDriverError::http)?;
    let v = parse_response(status, &text)?;
    let id = v["sessionId"]
        .as_str()
        .ok_or_else(|| WebDriverError::http(format!("a session without an id: {text}")))?
        .to_owned();
    let url = format!("{driver_url}/session/{id}");
    Ok((id, url))
}

impl<'b> Element<'b> {
    fn path(&self, rest: &str) -> String {
        format!("/element/{}{rest}", self.id)
    }

    /// This element as an argument of [`Browser::execute`].
    pub fn as_arg(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }

    /// Types `text` into it; for an `<input type=file>`, `text` is a local path (several,
    /// one per line, for a `multiple` input).
    pub async fn send_keys(&self, text: &str) {
        self.browser
            .post(&self.path("/value"), json!({ "text": text }))
            .await
            .unwrap_or_else(|e| panic!("typing into {:?}: {e}", self.css));
    }

    pub async fn click(&self) {
        self.browser
            .post(&self.path("/click"), json!({}))
            .await
            .unwrap_or_else(|e| panic!("clicking {:?}: {e}", self.css));
    }

    /// Its rendered text.
    pub async fn text(&self) -> String {
        let v = self
            .browser
            .get(&self.path("/text"))
            .await
            .unwrap_or_else(|e| panic!("the text of {:?}: {e}", self.css));
        v.as_str().unwrap_or_default().to_owned()
    }

    /// Its HTML attribute `name` (`None` when absent).
    pub async fn attribute(&self, name: &str) -> Option<String> {
        let v = self
            .browser
            .get(&self.path(&format!("/attribute/{name}")))
            .await
            .unwrap_or_else(|e| panic!("attribute {name} of {:?}: {e}", self.css));
        match v {
            Value::Null => None,
            Value::String(s) => Some(s),
            other => Some(other.to_string()),
        }
    }

    /// Its DOM property `name` (`naturalWidth`, `value`, `checked` ...).
    pub async fn property(&self, name: &str) -> Value {
        self.browser
            .get(&self.path(&format!("/property/{name}")))
            .await
            .unwrap_or_else(|e| panic!("property {name} of {:?}: {e}", self.css))
    }

    /// Whether it is displayed (WebDriver's notion: rendered, not `hidden`).
    pub async fn is_displayed(&self) -> bool {
        self.browser
            .get(&self.path("/displayed"))
            .await
            .map(|v| v == true)
            .unwrap_or(false)
    }

    /// The first element matching `css` inside this one, if any.
    pub async fn try_find(&self, css: &str) -> Result<Option<Element<'b>>, WebDriverError> {
        let found = self
            .browser
            .post(
                &self.path("/element"),
                json!({ "using": "css selector", "value": css }),
            )
            .await;
        match found {
            Ok(v) => Ok(element_id(&v).map(|id| Element {
                browser: self.browser,
                id,
                css: format!("{} {css}", self.css),
            })),
            Err(e) if e.is_no_such_element() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The first element matching `css` inside this one; panics when there is none.
    pub async fn find(&self, css: &str) -> Element<'b> {
        match self.try_find(css).await {
            Ok(Some(el)) => el,
            Ok(None) => panic!(
                "no element matches {css:?} inside {:?}\n{}",
                self.css,
                self.browser.page_state().await
            ),
            Err(e) => panic!("finding {css:?} inside {:?}: {e}", self.css),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_give_their_value_or_their_error() {
        let v = parse_response(200, r#"{"value":{"sessionId":"abc"}}"#).expect("a value");
        assert_eq!(v["sessionId"], "abc");
        assert_eq!(
            parse_response(200, r#"{"value":null}"#).expect("null"),
            Value::Null
        );
        let e = parse_response(
            404,
            r#"{"value":{"error":"no such element","message":"no such element: Unable to locate element\n  (Session info: chrome=156)","stacktrace":""}}"#,
        )
        .expect_err("an error");
        assert!(e.is_no_such_element());
        assert_eq!(
            e.to_string(),
            "no such element: no such element: Unable to locate element"
        );
        let e = parse_response(500, "oops").expect_err("not JSON");
        assert_eq!(e.error, "http");
        assert!(
            e.message.contains("500") && e.message.contains("oops"),
            "{e:?}"
        );
    }

    #[test]
    fn plain_and_chunked_answers_are_read() {
        let plain = "HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{\"value\":null}";
        assert_eq!(parse_http(plain), Some((200, "{\"value\":null}".into())));
        let chunked = "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"va\r\n9;x=y\r\nlue\":null\r\n1\r\n}\r\n0\r\n\r\n";
        assert_eq!(parse_http(chunked), Some((404, "{\"value\":null}".into())));
        assert_eq!(parse_http("garbage"), None);
        assert!(is_complete(plain) && is_complete(chunked));
        assert!(!is_complete(&plain[..plain.len() - 1]));
        assert!(!is_complete(&chunked[..chunked.len() - 3]));
        assert!(!is_complete("HTTP/1.1 200 OK\r\nContent-Length: 3"));
    }

    #[test]
    fn element_references_are_read_by_their_w3c_key() {
        let v = json!({ ELEMENT_KEY: "f.1.2" });
        assert_eq!(element_id(&v).as_deref(), Some("f.1.2"));
        assert_eq!(element_id(&json!({"ELEMENT": "x"})), None);
    }

    #[test]
    fn truthiness_is_javascripts() {
        for v in [json!(null), json!(false), json!(0), json!(""), json!(0.0)] {
            assert!(!truthy(&v), "{v}");
        }
        for v in [
            json!(true),
            json!(1),
            json!("x"),
            json!([]),
            json!({}),
            json!(-2.5),
        ] {
            assert!(truthy(&v), "{v}");
        }
    }

    #[test]
    fn excerpts_cut_on_characters() {
        assert_eq!(excerpt("abc", 5), "abc");
        assert_eq!(excerpt("ééééé", 2), "éé... (6 more bytes)");
    }

    #[test]
    fn sessions_ask_for_headless_chromium_with_a_private_profile() {
        let caps = capabilities(Path::new("/usr/bin/chromium"), Path::new("/tmp/p"));
        let opts = &caps["capabilities"]["alwaysMatch"]["goog:chromeOptions"];
        assert_eq!(opts["binary"], "/usr/bin/chromium");
        let args: Vec<&str> = opts["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for a in [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            "--user-data-dir=/tmp/p",
        ] {
            assert!(args.contains(&a), "{a} in {args:?}");
        }
    }
}

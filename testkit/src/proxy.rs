//! A TCP proxy in front of a broker node that can cut every connection and refuse new
//! ones, as a stopped node does, and then let them through again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use imagejobs_core::config::{AmqpUrl, AmqpUrls};

pub struct Proxy {
    pub addr: SocketAddr,
    target: AmqpUrl,
    enabled: Arc<AtomicBool>,
    generation: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Proxy {
    /// A proxy on 127.0.0.1:0 to the node of `target`.
    pub async fn start(target: &AmqpUrl) -> Proxy {
        let upstream: SocketAddr = target
            .authority()
            .replace("localhost", "127.0.0.1")
            .parse()
            .expect("the broker's address is ip:port");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let enabled = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (en, gen, st) = (enabled.clone(), generation.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (mut client, _) = tokio::select! {
                    _ = st.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                if !en.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let cut = gen.lock().unwrap_or_else(|p| p.into_inner()).clone();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            target: target.clone(),
            enabled,
            generation,
            stop,
        }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        g.cancel();
        *g = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }

    /// The AMQP URL through this proxy.
    pub fn urls(&self) -> AmqpUrls {
        AmqpUrls(vec![self.target.with_authority(&self.addr.to_string())])
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

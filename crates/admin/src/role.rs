//! The admin role as the binary runs it: built from its state, served until shutdown.

use std::sync::Arc;

use crate::{AdminState, router};

/// The admin role, built and not yet serving.
#[derive(Debug)]
pub struct AdminRole {
    app: Arc<AdminState>,
}

impl AdminRole {
    pub fn new(app: Arc<AdminState>) -> Self {
        Self { app }
    }

    /// Serves the API on `listener` under the configured connection limits until
    /// `shutdown`, then lets requests in progress finish.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let connections = Arc::clone(&self.app.connections);
        let listener_metrics = Arc::clone(&self.app.listener_metrics);
        callbox_http::serve(
            listener,
            router(self.app),
            connections,
            listener_metrics,
            shutdown,
        )
        .await
    }
}

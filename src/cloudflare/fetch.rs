//! The Worker's [`Transport`]: `worker::Fetch` with a per-attempt timeout, `setTimeout` sleeps and
//! `Math.random` jitter.

use std::time::Duration;

use futures_util::future::{select, Either};
use wasm_bindgen::JsValue;
use worker::{AbortController, Delay, Fetch, Headers, Method as WMethod, Request, RequestInit};

use super::{Body, HttpRequest, HttpResponse, Method, Transport, TransportError};

pub struct FetchTransport {
    /// Each attempt is abandoned after this long (the lost-answer case of a hung connection).
    pub timeout: Duration,
}

impl FetchTransport {
    fn build(&self, request: &HttpRequest) -> worker::Result<Request> {
        let headers = Headers::new();
        if let Some(auth) = &request.authorization {
            headers.set("Authorization", auth)?;
        }
        let mut init = RequestInit::new();
        init.with_method(match request.method {
            Method::Get => WMethod::Get,
            Method::Post => WMethod::Post,
            Method::Patch => WMethod::Patch,
            Method::Put => WMethod::Put,
            Method::Delete => WMethod::Delete,
        });
        match &request.body {
            Body::None => {}
            Body::Json(value) => {
                headers.set("Content-Type", "application/json")?;
                init.with_body(Some(value.to_string().into()));
            }
            Body::Settings(value) => {
                // The multipart boundary header is set by the runtime from the FormData body.
                let js = |e: JsValue| worker::Error::JsError(format!("{e:?}"));
                let form = web_sys::FormData::new().map_err(js)?;
                let options = web_sys::BlobPropertyBag::new();
                options.set_type("application/json");
                let parts = js_sys::Array::of1(&JsValue::from_str(&value.to_string()));
                let blob = web_sys::Blob::new_with_str_sequence_and_options(&parts, &options).map_err(js)?;
                form.append_with_blob("settings", &blob).map_err(js)?;
                init.with_body(Some(form.into()));
            }
            Body::Script { metadata, module_name, module } => {
                let js = |e: JsValue| worker::Error::JsError(format!("{e:?}"));
                let form = web_sys::FormData::new().map_err(js)?;
                let part = |text: &str, mime: &str| {
                    let options = web_sys::BlobPropertyBag::new();
                    options.set_type(mime);
                    web_sys::Blob::new_with_str_sequence_and_options(
                        &js_sys::Array::of1(&JsValue::from_str(text)),
                        &options,
                    )
                };
                form.append_with_blob("metadata", &part(&metadata.to_string(), "application/json").map_err(js)?)
                    .map_err(js)?;
                form.append_with_blob_and_filename(
                    module_name,
                    &part(module, "application/javascript+module").map_err(js)?,
                    module_name,
                )
                .map_err(js)?;
                init.with_body(Some(form.into()));
            }
            Body::Bytes(bytes) => {
                init.with_body(Some(js_sys::Uint8Array::from(bytes.as_slice()).into()));
            }
        }
        init.with_headers(headers);
        Request::new_with_init(&request.url, &init)
    }
}

impl Transport for FetchTransport {
    async fn send(&self, request: &HttpRequest) -> Result<HttpResponse, TransportError> {
        let controller = AbortController::default();
        let signal = controller.signal();
        let req = self.build(request).map_err(|e| TransportError::Network(e.to_string()))?;
        let exchange = async move {
            let mut response = Fetch::Request(req).send_with_signal(&signal).await?;
            let body = response.bytes().await?;
            let retry_after = response.headers().get("Retry-After")?;
            Ok::<_, worker::Error>(HttpResponse { status: response.status_code(), retry_after, body })
        };
        let timeout = Delay::from(attempt_timeout(self.timeout, &request.url));
        match select(Box::pin(exchange), timeout).await {
            Either::Left((Ok(response), _)) => Ok(response),
            Either::Left((Err(e), _)) => Err(TransportError::Network(e.to_string())),
            Either::Right(_) => {
                controller.abort();
                Err(TransportError::Timeout)
            }
        }
    }

    async fn sleep(&self, duration: Duration) {
        Delay::from(duration).await
    }

    fn random(&self) -> f64 {
        js_sys::Math::random()
    }
}

/// How long one attempt may take: `default`, except for a Time Travel restore, which rewrites the
/// whole database before it answers. Cut short, it would be sent again (and each one counts
/// against D1's 10 restores per 10 minutes) while the first is still running.
fn attempt_timeout(default: std::time::Duration, url: &str) -> std::time::Duration {
    const RESTORE: std::time::Duration = std::time::Duration::from_secs(300);
    if url.contains("/time_travel/restore") {
        default.max(RESTORE)
    } else {
        default
    }
}

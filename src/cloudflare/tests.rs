//! The client against a scripted transport: envelopes, error mapping, retries, redaction.

use std::cell::RefCell;
use std::collections::VecDeque;

use futures::executor::block_on;

use super::*;

/// Answers from a script, records what was sent and how long the client slept.
#[derive(Default)]
struct Fake {
    script: RefCell<VecDeque<Result<HttpResponse, TransportError>>>,
    sent: RefCell<Vec<HttpRequest>>,
    slept: RefCell<Vec<Duration>>,
}

impl Fake {
    fn with(answers: Vec<Result<HttpResponse, TransportError>>) -> Self {
        Self { script: RefCell::new(answers.into()), ..Default::default() }
    }
}

impl Transport for &Fake {
    async fn send(&self, request: &HttpRequest) -> Result<HttpResponse, TransportError> {
        self.sent.borrow_mut().push(request.clone());
        self.script.borrow_mut().pop_front().expect("the client sent more requests than scripted")
    }
    async fn sleep(&self, duration: Duration) {
        self.slept.borrow_mut().push(duration);
    }
    fn random(&self) -> f64 {
        1.0
    }
}

fn ok(result: Value) -> Result<HttpResponse, TransportError> {
    answer(200, json!({ "success": true, "errors": [], "messages": [], "result": result }), None)
}

fn err(status: u16, code: u32, message: &str) -> Result<HttpResponse, TransportError> {
    answer(
        status,
        json!({ "success": false, "errors": [{ "code": code, "message": message }], "messages": [], "result": null }),
        None,
    )
}

fn answer(status: u16, body: Value, retry_after: Option<&str>) -> Result<HttpResponse, TransportError> {
    Ok(HttpResponse { status, retry_after: retry_after.map(str::to_owned), body: body.to_string().into_bytes() })
}

const SECRET: &str = "super-secret-token-value";

fn client(fake: &Fake) -> Client<&Fake> {
    let policy = RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(100),
        cap: Duration::from_secs(1),
        budget: Duration::from_secs(10),
    };
    Client::new(fake, "https://api.example/client/v4/", "acc", ApiToken::new(SECRET), policy)
}

fn db(uuid: &str, name: &str) -> Value {
    json!({ "uuid": uuid, "name": name, "created_at": "2026-01-01T00:00:00Z", "version": "production" })
}

#[test]
fn builds_requests_from_endpoints() {
    let fake = Fake::with(vec![ok(db("u1", "tenantry-acme"))]);
    let got = block_on(client(&fake).create_database("tenantry-acme")).unwrap();
    assert_eq!(got.uuid, "u1");
    let sent = &fake.sent.borrow()[0];
    assert_eq!(sent.method, Method::Post);
    assert_eq!(sent.url, "https://api.example/client/v4/accounts/acc/d1/database");
    assert_eq!(sent.authorization.as_deref(), Some("Bearer super-secret-token-value"));
    assert_eq!(sent.body, Body::Json(json!({ "name": "tenantry-acme" })));

    let patch = endpoints::patch_settings("tenantry", &[json!({ "type": "inherit", "name": "A" })]);
    assert_eq!(patch.path, "/workers/scripts/tenantry/settings");
    assert_eq!(patch.body, Body::Settings(json!({ "bindings": [{ "type": "inherit", "name": "A" }] })));
    assert_eq!(endpoints::list_databases("a b&c", 2, 100).path, "/d1/database?name=a+b%26c&page=2&per_page=100");
    assert_eq!(
        endpoints::query("u1", "SELECT ?1", &[json!(1)]).body,
        Body::Json(json!({ "sql": "SELECT ?1", "params": [1] }))
    );
}

#[test]
fn maps_error_codes_to_typed_errors() {
    type Case = (Result<HttpResponse, TransportError>, fn(&CfError) -> bool);
    let cases: Vec<Case> = vec![
        (err(400, 7502, "exists"), |e| matches!(e, CfError::AlreadyExists { .. })),
        (err(400, 7406, "limit"), |e| matches!(e, CfError::DatabaseLimit { .. })),
        (err(404, 7404, "nope"), |e| matches!(e, CfError::NotFound { code: 7404, .. })),
        (err(404, 10007, "no script"), |e| matches!(e, CfError::NotFound { code: 10007, .. })),
        (err(403, 10000, "Authentication error"), |e| matches!(e, CfError::Unauthorized { status: 403, .. })),
        (err(401, 10001, "Unable to authenticate"), |e| matches!(e, CfError::Unauthorized { status: 401, .. })),
        (err(400, 7500, "syntax error"), |e| matches!(e, CfError::Api { code: 7500, .. })),
        (answer(200, json!("not an envelope"), None), |e| matches!(e, CfError::Decode { .. })),
    ];
    for (answer, check) in cases {
        let is_decode = matches!(&answer, Ok(r) if r.status == 200);
        // Decode failures are retried like server errors: script enough answers for that.
        let script = if is_decode { vec![answer.clone(), answer.clone(), answer] } else { vec![answer] };
        let fake = Fake::with(script);
        let e = block_on(client(&fake).get_settings("tenantry")).unwrap_err();
        assert!(check(&e), "{e:?}");
    }
}

#[test]
fn retries_5xx_and_network_errors_then_succeeds() {
    let fake = Fake::with(vec![
        err(502, 7500, "bad gateway"),
        Err(TransportError::Network("reset".into())),
        ok(json!({ "bindings": [] })),
    ]);
    assert!(block_on(client(&fake).get_settings("tenantry")).is_ok());
    assert_eq!(fake.sent.borrow().len(), 3);
    assert_eq!(*fake.slept.borrow(), vec![Duration::from_millis(100), Duration::from_millis(200)]);
}

#[test]
fn honours_retry_after_and_gives_up_after_max_attempts() {
    let fake = Fake::with(vec![
        answer(429, json!({ "success": false, "errors": [{ "code": 971, "message": "slow down" }] }), Some("3")),
        err(500, 7500, "boom"),
        err(500, 7500, "boom"),
    ]);
    let e = block_on(client(&fake).get_settings("tenantry")).unwrap_err();
    assert!(matches!(e, CfError::Server { status: 500, .. }), "{e:?}");
    assert!(e.is_transient());
    assert_eq!(fake.slept.borrow()[0], Duration::from_secs(3));
    assert_eq!(fake.sent.borrow().len(), 3);
}

#[test]
fn client_errors_are_not_retried() {
    let fake = Fake::with(vec![err(400, 7400, "malformed")]);
    let e = block_on(client(&fake).create_database("x")).unwrap_err();
    assert!(!e.is_transient());
    assert_eq!(fake.sent.borrow().len(), 1);
    assert!(fake.slept.borrow().is_empty());
}

#[test]
fn a_settings_change_refused_while_the_latest_version_is_not_deployed_waits_for_later() {
    // 10214: a deploy is between its version upload and its deployment. Not retried within the
    // call (it does not pass in milliseconds), but the operation log tries again later.
    let fake = Fake::with(vec![err(400, 10214, "latest version not deployed")]);
    let e = block_on(client(&fake).patch_settings("tenantry", &[])).unwrap_err();
    assert!(matches!(e, CfError::Api { code: 10214, .. }), "{e:?}");
    assert!(e.is_transient());
    assert_eq!(fake.sent.borrow().len(), 1);
}

#[test]
fn a_lost_create_response_then_7502_is_reported_as_already_exists() {
    let fake = Fake::with(vec![Err(TransportError::Network("connection reset".into())), err(400, 7502, "exists")]);
    assert!(matches!(block_on(client(&fake).create_database("x")), Err(CfError::AlreadyExists { .. })));
}

#[test]
fn find_database_matches_names_exactly_across_pages() {
    let page1: Vec<Value> = (0..1000).map(|i| db(&format!("u{i}"), &format!("tenantry-acme{i}"))).collect();
    let info = |page, count| json!({ "page": page, "per_page": 1000, "count": count, "total_count": 1001 });
    let fake = Fake::with(vec![
        answer(200, json!({ "success": true, "errors": [], "result": page1, "result_info": info(1, 1000) }), None),
        answer(
            200,
            json!({ "success": true, "errors": [], "result": [db("exact", "tenantry-acme")], "result_info": info(2, 1) }),
            None,
        ),
    ]);
    let found = block_on(client(&fake).find_database("tenantry-acme")).unwrap();
    assert_eq!(found.map(|d| d.uuid), Some("exact".to_owned()));
    assert_eq!(fake.sent.borrow().len(), 2);
}

#[test]
fn get_database_by_id_and_unknown_ids() {
    let fake = Fake::with(vec![ok(db("u1", "tenantry-acme")), err(404, 7404, "not found")]);
    let c = client(&fake);
    assert_eq!(block_on(c.get_database("u1")).unwrap().name, "tenantry-acme");
    assert!(matches!(block_on(c.get_database("nope")), Err(CfError::NotFound { code: 7404, .. })));
    assert_eq!(fake.sent.borrow()[0].url, "https://api.example/client/v4/accounts/acc/d1/database/u1");
}

#[test]
fn deleting_a_missing_database_is_done() {
    let fake = Fake::with(vec![err(404, 7404, "not found")]);
    assert!(block_on(client(&fake).delete_database("gone")).is_ok());
}

#[test]
fn the_token_never_appears_in_debug_output_or_errors() {
    let token = ApiToken::new(SECRET);
    assert!(!format!("{token:?}").contains(SECRET));
    let fake = Fake::with(vec![err(403, 10000, "Authentication error")]);
    let c = client(&fake);
    let e = block_on(c.get_settings("tenantry")).unwrap_err();
    assert!(!format!("{e} {e:?}").contains(SECRET));
}

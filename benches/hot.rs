//! Micro-benchmarks of the hot parts: the record codec, a state transition made durable
//! through the group commit, public ids (a new request id with its channel id, and the way
//! back), webhook signing, webhook body building, and Phoenix frame encoding. Run with
//! `cargo bench --bench hot`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eddy::job::{
    AiResult, ChannelId, Delivery, DeliveryOutcome, ProjectId, Request, State, WorkflowSnapshot,
};
use eddy::store::Store;
use eddy::{payload, signature, ws};

/// The value of a sled store call, which is ready at once (its methods are async for the
/// cluster backend): the benchmarks measure the same work as before the seam.
fn ready<T>(call: impl std::future::Future<Output = T>) -> T {
    futures_util::FutureExt::now_or_never(call).expect("the sled store answers at once")
}

fn record(id: u64) -> Request {
    Request {
        id,
        channel_id: ChannelId::from_bytes([7; 16]),
        project_id: ProjectId::from_bytes([9; 16]),
        workflow: WorkflowSnapshot {
            name: "content_generator".into(),
            event_name: Some("content_ready".into()),
            provider: "openai".into(),
            model: "gpt-4o".into(),
            testing: true,
            response_delay_ms: 0,
            callback_timeout_ms: None,
            structured_output_id: Some("schema_abc".into()),
            schema: Some(r#"{"type":"object"}"#.into()),
            sample_data: None,
            system_prompt: None,
            fallbacks: Vec::new(),
        },
        messages: r#"[{"role":"user","content":"Generate a product description for wireless headphones"}]"#.into(),
        customer_data: r#"{"product_id":"prod_123","category":"electronics"}"#.into(),
        webhook_url: None,
        test_mode: false,
        state: State::Generated,
        created_ms: 1_771_144_200_000,
        updated_ms: 1_771_144_200_300,
        due_ms: None,
        ai: Some(AiResult {
            data: r#"{"title":"ProSound X1 Wireless Headphones","description":"Experience crystal-clear audio...","features":["Active noise cancellation","40-hour battery"]}"#.into(),
            provider: "Testing".into(),
            model: "test-mode".into(),
            prompt_tokens: 0,
            completion_tokens: 0,
            duration_ms: 300,
            generated_ms: 1_771_144_200_300,
        }),
        error_message: None,
        failed_ms: None,
        deliveries: vec![Delivery {
            webhook_id: "msg_2Zb4kQ9x".into(),
            endpoint_id: "wh_abc".into(),
            url: "https://backend.example.com/webhooks/modelriver".into(),
            attempts: 0,
            next_ms: Some(1_771_144_200_300),
            outcome: DeliveryOutcome::Pending,
            last_status: None,
            last_error: None,
        }],
        callback: None,
        callback_deadline_ms: None,
        ai_attempts: Vec::new(),
    }
}

fn codec(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8 << 20, 0).unwrap();
    let mut r = record(store.next_id().unwrap());
    ready(store.insert_request(&mut r)).unwrap();
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(1));
    group.bench_function("read (get + decode)", |b| {
        b.iter(|| black_box(ready(store.request(r.id)).unwrap()))
    });
    group.bench_function("update (decode + CAS + encode)", |b| {
        b.iter(|| {
            black_box(
                ready(store.update(r.id, 1, |rec| {
                    rec.updated_ms += 1;
                    Ok::<_, ()>(())
                }))
                .unwrap(),
            )
        })
    });
    group.finish();
}

fn durable_transition(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8 << 20, 0).unwrap();
    let mut r = record(store.next_id().unwrap());
    ready(store.insert_request(&mut r)).unwrap();
    let mut group = c.benchmark_group("group commit");
    group.throughput(Throughput::Elements(1));
    group.sample_size(30);
    group.bench_function("one writer: update + commit", |b| {
        b.iter(|| {
            runtime.block_on(async {
                store
                    .update(r.id, 1, |rec| {
                        rec.updated_ms += 1;
                        Ok::<_, ()>(())
                    })
                    .await
                    .unwrap();
                store.commit().await.unwrap();
            })
        })
    });
    group.throughput(Throughput::Elements(64));
    group.bench_function("64 writers: update + commit each", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut tasks = Vec::with_capacity(64);
                for _ in 0..64 {
                    let store = store.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut rec = record(store.next_id().unwrap());
                        store.insert_request(&mut rec).await.unwrap();
                        store.commit().await.unwrap();
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            })
        })
    });
    group.finish();
}

fn ids(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8 << 20, 0).unwrap();
    let (id, channel) = ready(store.new_request_id()).unwrap();
    let mut r = record(id);
    r.channel_id = channel;
    ready(store.insert_request(&mut r)).unwrap();
    let mut group = c.benchmark_group("ids");
    group.throughput(Throughput::Elements(1));
    group.bench_function("new request id and channel id", |b| {
        b.iter(|| black_box(ready(store.new_request_id()).unwrap()))
    });
    group.bench_function("request by channel id", |b| {
        b.iter(|| black_box(ready(store.request_by_channel(&channel)).unwrap()))
    });
    group.finish();
}

fn signing_and_bodies(c: &mut Criterion) {
    let r = record(1);
    let body = payload::webhook_body(&r, "https://eddy.example.com");
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut group = c.benchmark_group("webhook");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("build body", |b| {
        b.iter(|| black_box(payload::webhook_body(&r, "https://eddy.example.com")))
    });
    group.bench_function("mr-signature", |b| {
        b.iter(|| black_box(signature::mr_signature(secret, body.as_bytes())))
    });
    group.bench_function("x-modelriver-signature", |b| {
        b.iter(|| {
            black_box(signature::modelriver_signature(
                secret,
                1_771_144_200,
                body.as_bytes(),
            ))
        })
    });
    group.bench_function("webhook-signature", |b| {
        b.iter(|| {
            black_box(signature::standard_signature(
                secret,
                "msg_2Zb4kQ9x",
                1_771_144_200,
                body.as_bytes(),
            ))
        })
    });
    group.finish();

    let push = payload::latest_push(&r).unwrap().payload;
    let topic = ws::topic(&r.project_id, &r.channel_id);
    let mut group = c.benchmark_group("phoenix");
    group.throughput(Throughput::Bytes(push.len() as u64));
    group.bench_function("encode push frame", |b| {
        b.iter(|| black_box(ws::frame::push(&topic, "response", &push)))
    });
    group.bench_function("parse join frame", |b| {
        let join = format!(r#"["3","3","{topic}","phx_join",{{}}]"#);
        b.iter(|| black_box(ws::frame::parse(&join).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, codec, durable_transition, ids, signing_and_bodies);
criterion_main!(benches);

// matrix-js-sdk (the SDK under Element Web) against a Myelin server, the way Element Web
// starts: log in, `startClient()` with Element's options and an in-memory store, wait for the
// real sync loop to reach PREPARED, then two users exchange messages in a new room and each
// one's read receipt clears its unread count.
//
//   node element_start.mjs <homeserver URL> <user A> <password A> <user B> <password B>
//
// Every HTTP request the SDK makes goes through a wrapped `fetchFn` and is printed as
// `[A] GET /path -> status (ms)`. The script exits 0 only if the whole flow passed and no
// request was answered 404 or 5xx; otherwise it names the step or the requests that failed.
// complement-tests/tests/suite/matrix_js_sdk.rs runs it against a fresh server on each backend.

// matrix-js-sdk 43 declares `engines: { node: ">=22" }`. The one Node 22 API it uses that
// Node 20 lacks is `Promise.withResolvers` (ES2024), so it is polyfilled here, before the SDK
// is loaded (hence the dynamic import below). With Node 22 or newer this does nothing.
if (typeof Promise.withResolvers !== "function") {
    Promise.withResolvers = function withResolvers() {
        let resolve;
        let reject;
        const promise = new this((res, rej) => {
            resolve = res;
            reject = rej;
        });
        return { promise, resolve, reject };
    };
}

const sdk = await import("matrix-js-sdk");
const { logger } = await import("matrix-js-sdk/lib/logger.js");
const { ClientEvent, RoomEvent, SyncState, NotificationCountType, ReceiptType, MemoryStore, KnownMembership } =
    sdk;

// The SDK logs every sync at debug level; warnings and errors are worth seeing.
logger.setLevel(process.env.MYELIN_JS_SDK_LOG ?? "warn");

const STEP_MS = Number(process.env.MYELIN_JS_STEP_MS ?? 30_000);
const TOTAL_MS = Number(process.env.MYELIN_JS_TOTAL_MS ?? 120_000);

const [hsUrl, userA, passwordA, userB, passwordB] = process.argv.slice(2);
if (!passwordB) {
    console.error("usage: node element_start.mjs <homeserver URL> <user A> <password A> <user B> <password B>");
    process.exit(2);
}

const started = Date.now();
const stamp = () => `${((Date.now() - started) / 1000).toFixed(2).padStart(6)}s`;
const say = (...args) => console.log(stamp(), ...args);

// ----- the request log ---------------------------------------------------------------

/** Every request any client made: { who, phase, method, path, status, ms, errcode }. */
const requests = [];
let phase = "login";

/** The last `unread_notifications` each user's /sync responses carried, by room ID. */
const serverCounts = { A: new Map(), B: new Map() };

/**
 * A `fetch` that records what the SDK asked and what it got. The access token is in the
 * Authorization header (the SDK's default), so paths carry nothing secret; the query string
 * is kept because it says which sync (`since`, `filter`) or which receipt it was.
 */
function recordingFetch(who) {
    return async (resource, init = {}) => {
        const url = new URL(resource instanceof Request ? resource.url : String(resource));
        const method = (init.method ?? (resource instanceof Request ? resource.method : "GET")).toUpperCase();
        const entry = { who, phase, method, path: url.pathname + url.search, status: null, ms: null, errcode: null };
        requests.push(entry);
        const t0 = Date.now();
        let response;
        try {
            response = await fetch(resource, init);
        } catch (e) {
            entry.ms = Date.now() - t0;
            // Aborted long-polls at shutdown are the SDK's doing, not the server's.
            entry.status = e?.name === "AbortError" ? "aborted" : `network error: ${e?.message ?? e}`;
            say(`[${who}] ${method} ${entry.path} -> ${entry.status} (${entry.ms} ms)`);
            throw e;
        }
        entry.ms = Date.now() - t0;
        entry.status = response.status;
        // Read a copy of the body: error codes for failures, unread counts from /sync.
        const isSync = url.pathname.endsWith("/sync");
        if (response.status >= 400 || isSync) {
            try {
                const body = await response.clone().json();
                if (response.status >= 400) entry.errcode = `${body.errcode ?? "?"}: ${body.error ?? ""}`;
                if (isSync && response.status === 200) {
                    for (const [roomId, room] of Object.entries(body.rooms?.join ?? {})) {
                        if (room.unread_notifications) serverCounts[who].set(roomId, room.unread_notifications);
                    }
                }
            } catch {
                // Not JSON: the status alone says enough.
            }
        }
        say(
            `[${who}] ${method} ${entry.path} -> ${entry.status} (${entry.ms} ms)` +
                (entry.errcode ? ` ${entry.errcode}` : ""),
        );
        return response;
    };
}

// ----- steps and waiting ---------------------------------------------------------------

let currentStep = "start";

/**
 * Runs one named step; a failure or a timeout names it, and a timeout adds what `explain()`
 * says about the state it was waiting on.
 */
async function step(name, fn, explain = () => "") {
    currentStep = name;
    say(`== ${name}`);
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${STEP_MS} ms ${explain()}`)), STEP_MS);
    });
    try {
        return await Promise.race([fn(), timeout]);
    } catch (e) {
        throw new Error(`step "${name}" failed: ${e?.stack ?? e}`);
    } finally {
        clearTimeout(timer);
    }
}

/**
 * Resolves once `check()` returns a truthy value, re-checking whenever `emitter` emits one of
 * `events` (and every 200 ms, so a state reached before we subscribed is not missed).
 */
function until(emitter, events, check) {
    return new Promise((resolve, reject) => {
        const done = (value) => {
            clearInterval(poll);
            for (const e of events) emitter.off(e, onEvent);
            resolve(value);
        };
        const onEvent = () => {
            try {
                const value = check();
                if (value) done(value);
            } catch (e) {
                clearInterval(poll);
                for (const ev of events) emitter.off(ev, onEvent);
                reject(e);
            }
        };
        const poll = setInterval(onEvent, 200);
        for (const e of events) emitter.on(e, onEvent);
        onEvent();
    });
}

// ----- clients -------------------------------------------------------------------------

/** Logs in as Element does (flows, then password login) and returns the session. */
async function login(who, user, password) {
    const anon = sdk.createClient({ baseUrl: hsUrl, fetchFn: recordingFetch(who) });
    await anon.getVersions();
    const flows = await anon.loginFlows();
    if (!flows.flows?.some((f) => f.type === "m.login.password")) {
        throw new Error(`no m.login.password flow offered: ${JSON.stringify(flows)}`);
    }
    return anon.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user },
        password,
        initial_device_display_name: `matrix-js-sdk test ${who}`,
    });
}

/** A logged-in client with its sync loop started, resolved once the first sync is PREPARED. */
async function start(who, session) {
    const client = sdk.createClient({
        baseUrl: hsUrl,
        userId: session.user_id,
        accessToken: session.access_token,
        deviceId: session.device_id,
        fetchFn: recordingFetch(who),
        store: new MemoryStore(),
        timelineSupport: true,
    });
    const syncStates = [];
    client.on(ClientEvent.Sync, (state, _prev, data) => {
        syncStates.push(state);
        if (state !== SyncState.Syncing || syncStates.length < 4) say(`[${who}] sync state ${state}`);
        if (state === SyncState.Error) {
            failures.push(`[${who}] sync state ERROR: ${data?.error?.stack ?? JSON.stringify(data)}`);
        }
    });
    // Element Web's start-up options (MatrixClientPeg): lazy-loaded members, threads, and
    // pending events detached from the timeline.
    await client.startClient({
        initialSyncLimit: 20,
        lazyLoadMembers: true,
        threadSupport: true,
        pendingEventOrdering: "detached",
    });
    await until(
        client,
        [ClientEvent.Sync],
        () => {
            const state = client.getSyncState();
            if (state === SyncState.Error) throw new Error(`[${who}] sync state ERROR`);
            return state === SyncState.Prepared || state === SyncState.Syncing;
        },
    );
    return client;
}

/** The room's unread total as the SDK shows it (for an unencrypted room, the server's). */
const unread = (client, roomId) => client.getRoom(roomId)?.getUnreadNotificationCount(NotificationCountType.Total) ?? 0;

/** Waits until `client` has an event in `roomId` with this body; returns it. */
function receive(client, roomId, body) {
    const find = () =>
        client
            .getRoom(roomId)
            ?.getLiveTimeline()
            .getEvents()
            .find((e) => e.getType() === "m.room.message" && e.getContent().body === body && !e.isSending());
    return until(client, [RoomEvent.Timeline, ClientEvent.Sync], find);
}

/** Waits until the SDK's and the server's last-reported unread total for the room satisfy `ok`. */
function unreadBecomes(who, client, roomId, ok) {
    return until(
        client,
        [RoomEvent.UnreadNotifications, ClientEvent.Sync],
        () => {
            const server = serverCounts[who].get(roomId)?.notification_count;
            return ok(unread(client, roomId)) && server !== undefined && ok(server);
        },
    );
}

/** For a timeout: the counts a user's unread step was looking at. */
const counts = (who, client, roomId) => () =>
    `(SDK count ${unread(client, roomId)}, last server unread_notifications ` +
    `${JSON.stringify(serverCounts[who].get(roomId) ?? null)})`;

// ----- the flow ------------------------------------------------------------------------

const failures = [];
/** Oddities worth a look that do not fail the run. */
const notes = [];
const clients = [];

const overall = setTimeout(() => {
    failures.push(`the whole run took longer than ${TOTAL_MS} ms (in step "${currentStep}")`);
    finish();
}, TOTAL_MS);

try {
    const sessionA = await step("A logs in", () => login("A", userA, passwordA));
    const sessionB = await step("B logs in", () => login("B", userB, passwordB));

    phase = "start-up";
    const a = await step("A: startClient() until PREPARED", () => start("A", sessionA));
    clients.push(a);
    const b = await step("B: startClient() until PREPARED", () => start("B", sessionB));
    clients.push(b);

    // In a browser startClient() also asks for TURN credentials (and again every minute);
    // on Node, which has no WebRTC, the SDK skips that, so ask the way it would.
    await step("A and B ask for TURN servers, as startClient() does in a browser", async () => {
        for (const c of [a, b]) await c.turnServer();
    });

    phase = "exchange";
    const roomId = await step("A creates a room and invites B", async () => {
        const { room_id } = await a.createRoom({
            preset: "private_chat",
            name: "js-sdk test",
            invite: [sessionB.user_id],
        });
        return room_id;
    });
    say(`room ${roomId}`);

    await step("B sees the invite", () =>
        until(b, [ClientEvent.Room, ClientEvent.Sync], () => b.getRoom(roomId)?.getMyMembership() === KnownMembership.Invite),
    );
    await step("B joins", () => b.joinRoom(roomId));
    await step("A sees B joined", () =>
        until(
            a,
            [ClientEvent.Sync, RoomEvent.Timeline],
            () => a.getRoom(roomId)?.getMember(sessionB.user_id)?.membership === KnownMembership.Join,
        ),
    );

    // A -> B: B's count rises by one, B reads, B's count drops to 0. The count is compared
    // with the one B had right after joining, which the server reports with the join.
    const joinedCount = await step("B's unread count after joining is known", () =>
        until(b, [ClientEvent.Sync], () => serverCounts.B.get(roomId)),
    );
    const bBase = joinedCount.notification_count ?? 0;
    if (bBase !== 0) {
        // Synapse counts from the user's join while there is no read receipt: the invite
        // before it is not unread.
        throw new Error(`B's unread count right after joining was ${bBase}, not 0`);
    }
    await step("A sends a message", () => a.sendTextMessage(roomId, "hello from A"));
    const fromA = await step("B receives A's message", () => receive(b, roomId, "hello from A"));
    await step(
        `B's unread count rises by one (from ${bBase})`,
        () => unreadBecomes("B", b, roomId, (n) => n === bBase + 1),
        counts("B", b, roomId),
    );
    await step("B sends a read receipt for A's message", () => b.sendReadReceipt(fromA, ReceiptType.Read));
    await step(
        "B's unread count drops to 0",
        () => unreadBecomes("B", b, roomId, (n) => n === 0),
        counts("B", b, roomId),
    );

    // B -> A: the same the other way; B's own message must not count for B.
    await step("B sends a reply", () => b.sendTextMessage(roomId, "hello from B"));
    const fromB = await step("A receives B's reply", () => receive(a, roomId, "hello from B"));
    await step(
        "A's unread count rises to 1",
        () => unreadBecomes("A", a, roomId, (n) => n === 1),
        counts("A", a, roomId),
    );
    await step("B's own reply does not count for B", async () => {
        await receive(b, roomId, "hello from B");
        // In detached ordering the live timeline holds the sync's copy, not the local echo,
        // so the sync that carried the reply (and its counts) has been read.
        const server = serverCounts.B.get(roomId)?.notification_count;
        if (unread(b, roomId) !== 0 || server !== 0) {
            throw new Error(`B's own message counted for B: SDK ${unread(b, roomId)}, server ${server}`);
        }
    });
    await step("A sends a read receipt for B's reply", () => a.sendReadReceipt(fromB, ReceiptType.Read));
    await step(
        "A's unread count drops to 0",
        () => unreadBecomes("A", a, roomId, (n) => n === 0),
        counts("A", a, roomId),
    );
    await step("B sees A's read receipt on its reply", () =>
        until(b, [RoomEvent.Receipt, ClientEvent.Sync], () =>
            b.getRoom(roomId)?.hasUserReadEvent(sessionA.user_id, fromB.getId()),
        ),
    );

    // One more round trip of the sync loop so requests started by the exchange are answered
    // before the log is judged.
    // "Start chat": B looks A up in the user directory (they share the room now).
    await step("B finds A with searchUserDirectory", async () => {
        const localpart = sessionA.user_id.slice(1).split(":")[0];
        const { results } = await b.searchUserDirectory({ term: localpart });
        const ids = results.map((u) => u.user_id);
        if (!ids.includes(sessionA.user_id)) throw new Error(`directory results ${JSON.stringify(ids)}`);
    });
    // Message search as Element Web's search bar does it (recent first, with context).
    await step("A finds both messages with searchRoomEvents", async () => {
        const found = await a.searchRoomEvents({ term: "hello" });
        const bodies = found.results.map((r) => r.context.getEvent().getContent().body);
        if (JSON.stringify(bodies) !== JSON.stringify(["hello from B", "hello from A"])) {
            throw new Error(`search results ${JSON.stringify(bodies)}`);
        }
        if (found.count !== 2) throw new Error(`search count ${found.count}`);
        if (!found.highlights.includes("hello")) throw new Error(`highlights ${JSON.stringify(found.highlights)}`);
    });

    await step("a last message reaches A", async () => {
        await b.sendTextMessage(roomId, "bye");
        await receive(a, roomId, "bye");
    });
} catch (e) {
    failures.push(String(e?.message ?? e));
}
finish();

function finish() {
    clearTimeout(overall);
    for (const c of clients) c.stopClient();

    console.log("\n===== every request the SDK made =====");
    for (const r of requests) {
        console.log(
            `[${r.who}] ${r.phase.padEnd(9)} ${r.method.padEnd(6)} ${String(r.status).padEnd(7)} ${r.path}` +
                (r.errcode ? `  (${r.errcode})` : ""),
        );
    }
    const bad = requests.filter((r) => r.status === 404 || (typeof r.status === "number" && r.status >= 500));
    const unanswered = requests.filter((r) => r.status === null);
    const otherErrors = requests.filter((r) => typeof r.status === "number" && r.status >= 400 && !bad.includes(r));
    console.log(
        `\n${requests.length} requests; ${bad.length} answered 404 or 5xx; ` +
            `${otherErrors.length} other 4xx; ${unanswered.length} still open at the end (long-polls)`,
    );
    for (const r of otherErrors) notes.push(`[${r.who}] ${r.method} ${r.path} -> ${r.status} ${r.errcode ?? ""}`);
    for (const n of notes) console.log(`note: ${n}`);
    for (const r of bad) failures.push(`[${r.who}] ${r.method} ${r.path} answered ${r.status} ${r.errcode ?? ""}`);

    if (failures.length > 0) {
        console.log("\nFAILED:");
        for (const f of failures) console.log(`  - ${f}`);
        process.exit(1);
    }
    console.log("\nPASSED: matrix-js-sdk started, exchanged messages and cleared unread counts");
    process.exit(0);
}

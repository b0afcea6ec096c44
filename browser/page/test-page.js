// Configures Converse.js from the URL query and exposes a small, read-only
// status object (window.palaverTest) that browser/drive.mjs polls.
//
// Query parameters:
//   websocket_url     ws://127.0.0.1:PORT/ws          (one of these two)
//   bosh_service_url  http://127.0.0.1:PORT/bosh
//   jid, password     the account to log in with
//   auto_login        "true" (default) or "false"
//   contact           bare JID to open a chat with once connected
//   room              room JID to join once connected (XEP-0045), as `nick`
//   nick              nickname in the room (default: the JID's local part)
//   loglevel          Converse log level (default "info"; "debug" logs every stanza)

const q = new URLSearchParams(window.location.search);

const state = {
    // loading -> initialized -> connected -> chat-open; or disconnected / error
    status: 'loading',
    jid: null,
    errors: [],
    events: [],
};
window.palaverTest = state;

function note(event, detail) {
    state.events.push(detail === undefined ? event : `${event} ${detail}`);
}

window.addEventListener('error', (e) => state.errors.push(`error: ${e.message}`));
window.addEventListener('unhandledrejection', (e) => state.errors.push(`unhandled rejection: ${e.reason}`));

if (!window.converse) {
    state.status = 'error';
    state.errors.push('window.converse is missing: /dist/converse.min.js did not load');
} else {
    window.converse.plugins.add('palaver-test', {
        initialize() {
            const { api } = this._converse;
            const connfeedback = this._converse.state?.connfeedback;
            const statusNames = Object.fromEntries(
                Object.entries(window.converse.env?.Strophe?.Status || {}).map(([name, n]) => [n, name]),
            );
            if (connfeedback) {
                connfeedback.on('change', () => {
                    const n = connfeedback.get('connection_status');
                    note('connection-status', `${statusNames[n] || n} ${connfeedback.get('message') || ''}`.trim());
                });
            }
            api.listen.on('connected', async () => {
                state.jid = api.connection.get()?.jid || null;
                state.status = 'connected';
                note('connected', state.jid);
                const room = q.get('room');
                if (room) {
                    const nick = q.get('nick') || (q.get('jid') || 'browser').split('@')[0];
                    try {
                        await api.rooms.open(room, { nick }, true);
                        state.status = 'chat-open';
                        note('room-open', room);
                    } catch (e) {
                        state.status = 'error';
                        state.errors.push(`api.rooms.open(${room}) failed: ${e}`);
                    }
                }
                const contact = q.get('contact');
                if (contact) {
                    try {
                        await api.chats.open(contact, {}, true);
                        state.status = 'chat-open';
                        note('chat-open', contact);
                    } catch (e) {
                        state.status = 'error';
                        state.errors.push(`api.chats.open(${contact}) failed: ${e}`);
                    }
                }
            });
            api.listen.on('disconnected', () => {
                state.status = 'disconnected';
                note('disconnected');
            });
            state.status = 'initialized';
        },
    });

    const settings = {
        assets_path: '/dist/',
        view_mode: 'fullscreen',
        jid: q.get('jid') || undefined,
        password: q.get('password') || undefined,
        auto_login: q.get('auto_login') !== 'false',
        auto_reconnect: false,
        discover_connection_methods: false,
        allow_non_roster_messaging: true,
        loglevel: q.get('loglevel') || 'info',
        whitelisted_plugins: ['palaver-test'],
        // Nothing of this test needs them; keeps the session small and quick.
        play_sounds: false,
        show_desktop_notifications: false,
        idle_presence_timeout: 0,
    };
    const ws = q.get('websocket_url');
    const bosh = q.get('bosh_service_url');
    if (ws) settings.websocket_url = ws;
    if (bosh) settings.bosh_service_url = bosh;
    if (!ws && !bosh) {
        state.status = 'error';
        state.errors.push('neither websocket_url nor bosh_service_url given');
    } else {
        window.converse.initialize(settings).catch((e) => {
            state.status = 'error';
            state.errors.push(`converse.initialize failed: ${e}`);
        });
    }
}

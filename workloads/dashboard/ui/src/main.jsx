// The dashboard's page. Every value is rendered as text through Preact (never as HTML), and all
// data arrives over the /live WebSocket, pushed by the server once per period; the only request
// the page makes itself is the lookup a user asks for.
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import './app.css';

const STAGES = [
  ['accepted', 'Accepted'],
  ['processed', 'Processed'],
  ['rejected', 'Rejected'],
  ['notified', 'Notified'],
];

// How long to wait before reconnecting, growing up to the maximum while the server is away.
const RECONNECT_MIN_MS = 500;
const RECONNECT_MAX_MS = 5000;

function useLiveSnapshot() {
  const [snapshot, setSnapshot] = useState(null);
  const [connection, setConnection] = useState('connecting');
  useEffect(() => {
    let socket;
    let timer;
    let delay = RECONNECT_MIN_MS;
    let stopped = false;
    const open = () => {
      const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
      socket = new WebSocket(`${scheme}://${location.host}/live`);
      socket.onopen = () => {
        delay = RECONNECT_MIN_MS;
        setConnection('live');
      };
      socket.onmessage = (event) => setSnapshot(JSON.parse(event.data));
      socket.onclose = () => {
        if (stopped) return;
        setConnection('reconnecting');
        timer = setTimeout(open, delay);
        delay = Math.min(delay * 2, RECONNECT_MAX_MS);
      };
    };
    open();
    return () => {
      stopped = true;
      clearTimeout(timer);
      socket.close();
    };
  }, []);
  return [snapshot, connection];
}

function time(millis) {
  return millis ? new Date(millis).toLocaleTimeString([], { hour12: false }) : '—';
}

function Status({ connection, snapshot }) {
  let label = { connecting: 'Connecting…', live: 'Live', reconnecting: 'Reconnecting…' }[connection];
  let kind = connection;
  if (connection === 'live' && snapshot && !snapshot.available) {
    label = 'Redis unavailable';
    kind = 'unavailable';
  }
  return (
    <span class={`status status-${kind}`} data-testid="connection">
      {label}
      {snapshot ? ` · updated ${time(snapshot.at)}` : ''}
    </span>
  );
}

function Counters({ snapshot }) {
  return (
    <section class="counters">
      {STAGES.map(([stage, title]) => (
        <div class={`card card-${stage}`} key={stage}>
          <h2>{title}</h2>
          <p class="rate">
            <span data-testid={`rate-${stage}`}>{snapshot ? snapshot.rates[stage].toFixed(1) : '0.0'}</span>
            <small>/s</small>
          </p>
          <p class="total">
            total <span data-testid={`total-${stage}`}>{snapshot ? snapshot.totals[stage] : 0}</span>
          </p>
        </div>
      ))}
    </section>
  );
}

function Inventory({ snapshot }) {
  const rows = snapshot ? snapshot.inventory : [];
  return (
    <section class="panel">
      <h2>Inventory</h2>
      {rows.length === 0 ? (
        <p class="empty">No SKU ordered yet.</p>
      ) : (
        <table>
          <thead>
            <tr><th>SKU</th><th class="number">Stock</th></tr>
          </thead>
          <tbody>
            {rows.map((row) => (
              <tr key={row.sku} data-testid="inventory-row">
                <td>{row.sku}</td>
                <td class={`number ${row.stock !== null && row.stock <= 0 ? 'low' : ''}`}>
                  {row.stock === null ? '—' : row.stock}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {snapshot && snapshot.inventory_truncated ? <p class="empty">More SKUs not shown.</p> : null}
    </section>
  );
}

function Count({ value, testid, alarm }) {
  if (value === null || value === undefined) return <td class="number muted" data-testid={testid}>—</td>;
  return <td class={`number ${alarm && value > 0 ? 'low' : ''}`} data-testid={testid}>{value}</td>;
}

function Queues({ snapshot }) {
  const queues = snapshot ? snapshot.queues : null;
  return (
    <section class="panel">
      <h2>Queues</h2>
      {!queues ? (
        <p class="empty" data-testid="queues-unavailable">Queue depths unavailable (no RabbitMQ connection).</p>
      ) : (
        <table>
          <thead>
            <tr><th>Queue</th><th class="number">Waiting</th><th class="number">Consumers</th><th class="number">Dead letters</th></tr>
          </thead>
          <tbody>
            {queues.map((queue) => (
              <tr key={queue.queue} data-testid="queue-row" data-queue={queue.queue}>
                <td class="mono">{queue.queue}</td>
                <Count value={queue.ready} testid="queue-ready" />
                <Count value={queue.consumers} testid="queue-consumers" />
                <Count value={queue.dead_letters} testid="queue-dead-letters" alarm />
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function Outcome({ order }) {
  if (!order.outcome) return <span class="badge badge-pending">pending</span>;
  return (
    <span class={`badge badge-${order.outcome}`}>
      {order.outcome}
      {order.reason ? ` (${order.reason.replaceAll('_', ' ')})` : ''}
    </span>
  );
}

function OrderRows({ orders, testid }) {
  return orders.map((order, index) => (
    <tr key={`${order.order_id}-${index}`} data-testid={testid}>
      <td class="mono">{order.order_id}</td>
      <td>{order.sku ?? '—'}</td>
      <td class="number">{order.qty ?? '—'}</td>
      <td><Outcome order={order} /></td>
      <td>{order.notification ?? '—'}</td>
      <td>{time(order.accepted_at)}</td>
      <td>{time(order.processed_at)}</td>
      <td>{time(order.notified_at)}</td>
    </tr>
  ));
}

function OrderTable({ orders, testid }) {
  return (
    <table>
      <thead>
        <tr>
          <th>Order</th><th>SKU</th><th class="number">Qty</th><th>Outcome</th>
          <th>Notification</th><th>Accepted</th><th>Processed</th><th>Notified</th>
        </tr>
      </thead>
      <tbody>
        <OrderRows orders={orders} testid={testid} />
      </tbody>
    </table>
  );
}

function Latest({ snapshot }) {
  const orders = snapshot ? snapshot.latest : [];
  return (
    <section class="panel wide">
      <h2>Latest orders</h2>
      {orders.length === 0 ? <p class="empty">No orders yet.</p> : <OrderTable orders={orders} testid="latest-row" />}
    </section>
  );
}

function Lookup() {
  const [orderId, setOrderId] = useState('');
  const [result, setResult] = useState(null);
  const submit = async (event) => {
    event.preventDefault();
    const id = orderId.trim();
    if (!id) return;
    try {
      const response = await fetch(`/api/orders/${encodeURIComponent(id)}`);
      const body = await response.json();
      setResult(response.ok ? { id, orders: body.orders } : { id, error: body.detail || 'lookup failed' });
    } catch {
      setResult({ id, error: 'the dashboard did not answer' });
    }
  };
  return (
    <section class="panel wide">
      <h2>Look up an order</h2>
      <form class="lookup" onSubmit={submit}>
        <input
          data-testid="lookup-input"
          placeholder="order id"
          value={orderId}
          maxLength={64}
          onInput={(event) => setOrderId(event.currentTarget.value)}
        />
        <button type="submit" data-testid="lookup-button">Look up</button>
      </form>
      <div data-testid="lookup-result">
        {result === null ? null : result.error ? (
          <p class="error">{result.error}</p>
        ) : result.orders.length === 0 ? (
          <p class="empty">No order {result.id} found.</p>
        ) : (
          <OrderTable orders={result.orders} testid="lookup-row" />
        )}
      </div>
    </section>
  );
}

function App() {
  const [snapshot, connection] = useLiveSnapshot();
  return (
    <main>
      <header>
        <h1>Order Pipeline</h1>
        <Status connection={connection} snapshot={snapshot} />
      </header>
      <Counters snapshot={snapshot} />
      <Latest snapshot={snapshot} />
      <div class="columns">
        <div class="stack">
          <Queues snapshot={snapshot} />
          <Inventory snapshot={snapshot} />
        </div>
        <Lookup />
      </div>
    </main>
  );
}

render(<App />, document.getElementById('app'));

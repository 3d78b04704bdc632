// The dashboard in a real browser (run by `cargo xtask browser-test`, which starts the pipeline,
// stocks SKU and passes the addresses): the page loads without console errors, orders placed
// through the gateway change the counters and the latest-orders list without a reload, and a
// lookup shows an order's status; the queues panel shows each work queue's consumers and dead
// letters as the broker counts them. Headless Debian Chromium driven by playwright-core.
import { chromium } from 'playwright-core';

const required = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run this through cargo xtask browser-test)`);
  return value;
};
const dashboard = required('DASHBOARD_URL');
const gateway = required('GATEWAY_URL');
const sku = required('SKU');
const stock = Number(required('STOCK'));
const runId = required('RUN_ID');
const screenshots = required('SCREENSHOTS').split('\n').filter(Boolean);
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT_MS = 30_000;

const step = (message) => console.log(`browser-test: ${message}`);

async function call(method, path, body, token) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(`${gateway}${path}`, { method, headers, body: JSON.stringify(body) });
  const text = await response.text();
  return { status: response.status, text };
}

async function placeOrders() {
  const email = `browser-test-${runId}@example.com`;
  const password = 'browser-test-password';
  const registered = await call('POST', '/register', { email, password });
  if (registered.status !== 201) throw new Error(`POST /register answered ${registered.status}: ${registered.text}`);
  const login = await call('POST', '/login', { email, password });
  if (login.status !== 200) throw new Error(`POST /login answered ${login.status}: ${login.text}`);
  const token = JSON.parse(login.text).token;
  // Two fit the stock, the third does not: one order of each outcome.
  const orders = [
    { id: `bt-${runId}-1`, qty: 2, outcome: 'processed' },
    { id: `bt-${runId}-2`, qty: stock - 2, outcome: 'processed' },
    { id: `bt-${runId}-3`, qty: 1, outcome: 'rejected' },
  ];
  for (const order of orders) {
    const placed = await call('POST', '/orders', { id: order.id, sku, qty: order.qty }, token);
    if (placed.status !== 202) throw new Error(`POST /orders ${order.id} answered ${placed.status}: ${placed.text}`);
    step(`placed ${order.id} (qty ${order.qty}) -> ${placed.status}`);
  }
  return { email, orders };
}

const number = async (page, testid) => Number(await page.getByTestId(testid).textContent());

const browser = await chromium.launch({ executablePath: chromiumPath, args: ['--no-sandbox'] });
const consoleErrors = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on('console', (message) => {
    if (message.type() === 'error') consoleErrors.push(message.text());
  });
  page.on('pageerror', (error) => consoleErrors.push(String(error)));

  step(`opening ${dashboard}`);
  await page.goto(dashboard, { waitUntil: 'load' });
  await page.getByTestId('connection').filter({ hasText: 'Live' }).waitFor({ timeout: WAIT_MS });
  await page.waitForFunction(() => document.querySelector('[data-testid="connection"]').textContent.includes('updated'), null, { timeout: WAIT_MS });
  const before = {
    accepted: await number(page, 'total-accepted'),
    processed: await number(page, 'total-processed'),
    rejected: await number(page, 'total-rejected'),
  };
  step(`page live; totals before: accepted ${before.accepted}, processed ${before.processed}, rejected ${before.rejected}`);
  // Survives only as long as the document does: a reload would lose it.
  await page.evaluate(() => { window.browserTestMarker = 'not reloaded'; });

  const { email, orders } = await placeOrders();

  await page.waitForFunction(
    ({ accepted, processed, rejected }) => {
      const value = (id) => Number(document.querySelector(`[data-testid="${id}"]`).textContent);
      return value('total-accepted') >= accepted + 3 && value('total-processed') >= processed + 2 && value('total-rejected') >= rejected + 1;
    },
    before,
    { timeout: WAIT_MS },
  );
  const after = {
    accepted: await number(page, 'total-accepted'),
    processed: await number(page, 'total-processed'),
    rejected: await number(page, 'total-rejected'),
  };
  step(`counters changed: accepted ${before.accepted} -> ${after.accepted}, processed ${before.processed} -> ${after.processed}, rejected ${before.rejected} -> ${after.rejected}`);

  for (const order of orders) {
    await page
      .getByTestId('latest-row')
      .filter({ hasText: order.id })
      .filter({ hasText: order.outcome })
      .waitFor({ timeout: WAIT_MS });
  }
  const rows = await page.getByTestId('latest-row').count();
  step(`latest orders list shows all ${orders.length} new orders with their outcomes (${rows} rows)`);
  const marker = await page.evaluate(() => window.browserTestMarker);
  if (marker !== 'not reloaded') throw new Error('the page was reloaded');
  step('no reload happened');

  const looked = orders[0];
  await page.getByTestId('lookup-input').fill(looked.id);
  await page.getByTestId('lookup-button').click();
  await page.getByTestId('lookup-row').filter({ hasText: looked.id }).filter({ hasText: looked.outcome }).waitFor({ timeout: WAIT_MS });
  step(`lookup of ${looked.id} shows ${looked.outcome}`);

  // The processor and the notifier consume their queues; nothing has been dead-lettered.
  for (const queue of ['orders.queue', 'notifier.queue']) {
    const row = page.locator(`[data-testid="queue-row"][data-queue="${queue}"]`);
    await row.waitFor({ timeout: WAIT_MS });
    await page.waitForFunction(
      (name) => {
        const cell = (id) => document.querySelector(`[data-testid="queue-row"][data-queue="${name}"] [data-testid="${id}"]`).textContent;
        return Number(cell('queue-consumers')) >= 1 && /^[0-9]+$/.test(cell('queue-ready')) && /^[0-9]+$/.test(cell('queue-dead-letters'));
      },
      queue,
      { timeout: WAIT_MS },
    );
    const cells = await row.locator('td').allTextContents();
    step(`queue ${queue}: waiting ${cells[1]}, consumers ${cells[2]}, dead letters ${cells[3]}`);
  }

  const text = await page.locator('body').textContent();
  if (text.includes(email)) throw new Error('the page shows an owner email');

  for (const path of screenshots) {
    await page.screenshot({ path, fullPage: true });
    step(`screenshot saved to ${path}`);
  }
} finally {
  await browser.close();
}
if (consoleErrors.length > 0) {
  throw new Error(`the page logged ${consoleErrors.length} console error(s):\n${consoleErrors.join('\n')}`);
}
step('passed: no console errors');

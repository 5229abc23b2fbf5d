// Subscribes with the npm `eventsource` package (the EventSource most Node code uses) and
// prints one JSON line per thing it sees: {"open": true}, {"error": ...} and every event
// with its type, lastEventId and data. Usage: node eventsource-client.mjs URL
import { EventSource } from "eventsource";

const print = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const source = new EventSource(process.argv[2]);
source.addEventListener("open", () => print({ open: true }));
source.addEventListener("error", (e) => print({ error: e.message ?? "error", readyState: source.readyState }));
for (const type of ["hello", "notification", "read", "token-expiring"]) {
  source.addEventListener(type, (e) => print({ type, id: e.lastEventId, data: JSON.parse(e.data) }));
}
process.stdin.on("end", () => { source.close(); process.exit(0); });  // the test closes stdin to stop us
process.stdin.resume();

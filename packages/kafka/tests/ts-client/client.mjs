// A client written for the TypeScript Flowcraft Kafka adapter (@flowcraft/kafka-adapter 1.4.4),
// following the pinned TS anchor's bench/client-lib.mjs, which follows the adapter's docs with
// the column names its code uses:
//   1. INSERT the run's context row: contexts(run_id, context_data = JSON of the initial context,
//      plus blueprintVersion = the blueprint's metadata.version or null: the TS worker drops the
//      first job without it; presetVersion: false leaves it out);
//   2. INSERT the run's status row: statuses(run_id, status = 'running', updated_at = now);
//   3. produce one message per start node: key = runId, value = {"runId","blueprintId","nodeId"}
//      (kafkajs's default partitioner: murmur2, as Java's client);
//   4. poll the status row until status != 'running'.
// It uses only kafkajs and cassandra-driver (versions pinned as in the anchor), never Flowcraft.
//
// Input (stdin, JSON): {brokers, cassandra: {host, port, dc}, keyspace, topic, presetVersion,
// timeoutMs, runs: [{runId, blueprint, initialContext}]}.
// Output (stdout, JSON): {statuses: {<runId>: {status, status_data} | null}}.
import cassandra from 'cassandra-driver'
import { Kafka, logLevel } from 'kafkajs'

const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const spec = JSON.parse(Buffer.concat(chunks).toString('utf8'))

// The TS analyzeBlueprint's startNodeIds: every node without an incoming edge.
function startNodeIds(blueprint) {
	const targets = new Set((blueprint.edges || []).map((edge) => edge.target))
	return blueprint.nodes.map((node) => node.id).filter((id) => !targets.has(id))
}

const client = new cassandra.Client({
	contactPoints: [spec.cassandra.host],
	protocolOptions: { port: spec.cassandra.port },
	localDataCenter: spec.cassandra.dc,
	keyspace: spec.keyspace,
})
const kafka = new Kafka({ clientId: 'ts-interop-client', brokers: spec.brokers, logLevel: logLevel.NOTHING })
const producer = kafka.producer()
await client.connect()
await producer.connect()
try {
	for (const { runId, blueprint, initialContext } of spec.runs) {
		const context = { ...(initialContext || {}) }
		if (spec.presetVersion) context.blueprintVersion = blueprint.metadata?.version || null
		await client.execute('INSERT INTO contexts (run_id, context_data) VALUES (?, ?)', [runId, JSON.stringify(context)], { prepare: true })
		await client.execute('INSERT INTO statuses (run_id, status, updated_at) VALUES (?, ?, ?)', [runId, 'running', new Date()], { prepare: true })
		await producer.send({
			topic: spec.topic,
			messages: startNodeIds(blueprint).map((nodeId) => ({ key: runId, value: JSON.stringify({ runId, blueprintId: blueprint.id, nodeId }) })),
		})
	}
	const statuses = Object.fromEntries(spec.runs.map(({ runId }) => [runId, null]))
	const deadline = Date.now() + spec.timeoutMs
	let pending = Object.keys(statuses)
	while (pending.length && Date.now() < deadline) {
		const rows = await client.execute('SELECT run_id, status, status_data FROM statuses WHERE run_id IN ?', [pending], { prepare: true })
		for (const row of rows.rows) {
			if (row.status && row.status !== 'running') statuses[row.run_id] = { status: row.status, status_data: row.status_data }
		}
		pending = pending.filter((runId) => statuses[runId] === null)
		if (pending.length) await new Promise((resolve) => setTimeout(resolve, 25))
	}
	process.stdout.write(JSON.stringify({ statuses }))
} finally {
	await producer.disconnect()
	await client.shutdown()
}

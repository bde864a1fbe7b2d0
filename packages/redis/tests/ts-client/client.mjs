// A client written for the TypeScript Flowcraft BullMQ adapter (@flowcraft/bullmq-adapter 1.7.1),
// following the pinned TS anchor's bench/client-lib.mjs, which follows the adapter docs:
//   1. HSET the initial context into workflow:state:<runId>, each value JSON-encoded, plus
//      blueprintVersion = JSON of the blueprint's metadata.version, or "null" without one (the TS
//      worker rejects the first job without it; presetVersion: false leaves it out);
//   2. queue.addBulk an `executeNode` job {runId, blueprintId, nodeId} per start node;
//   3. poll GET workflow:status:<runId> until it exists.
// It uses only bullmq and ioredis (versions pinned as in the anchor), never Flowcraft itself.
//
// Input (stdin, JSON): {redisUrl, queueName, presetVersion, timeoutMs, runs: [{runId, blueprint,
// initialContext}]}. Output (stdout, JSON): {statuses: {<runId>: <raw status text> | null}}.
import { Queue } from 'bullmq'
import IORedis from 'ioredis'

const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const spec = JSON.parse(Buffer.concat(chunks).toString('utf8'))

// The TS analyzeBlueprint's startNodeIds: every node without an incoming edge.
function startNodeIds(blueprint) {
	const targets = new Set((blueprint.edges || []).map((edge) => edge.target))
	return blueprint.nodes.map((node) => node.id).filter((id) => !targets.has(id))
}

const redis = new IORedis(spec.redisUrl, { maxRetriesPerRequest: null })
const queue = new Queue(spec.queueName, { connection: redis })
try {
	for (const { runId, blueprint, initialContext } of spec.runs) {
		const fields = {}
		for (const [key, value] of Object.entries(initialContext || {})) fields[key] = JSON.stringify(value)
		if (spec.presetVersion) fields.blueprintVersion = JSON.stringify(blueprint.metadata?.version || null)
		if (Object.keys(fields).length) await redis.hset(`workflow:state:${runId}`, fields)
		const jobs = startNodeIds(blueprint).map((nodeId) => ({
			name: 'executeNode',
			data: { runId, blueprintId: blueprint.id, nodeId },
		}))
		await queue.addBulk(jobs)
	}
	const statuses = Object.fromEntries(spec.runs.map(({ runId }) => [runId, null]))
	const deadline = Date.now() + spec.timeoutMs
	let pending = Object.keys(statuses)
	while (pending.length && Date.now() < deadline) {
		const values = await redis.mget(pending.map((runId) => `workflow:status:${runId}`))
		values.forEach((value, i) => {
			if (value !== null) statuses[pending[i]] = value
		})
		pending = pending.filter((runId) => statuses[runId] === null)
		if (pending.length) await new Promise((resolve) => setTimeout(resolve, 25))
	}
	process.stdout.write(JSON.stringify({ statuses }))
} finally {
	await queue.close()
	await redis.quit()
}

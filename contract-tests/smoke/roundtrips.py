"""One real round-trip per server, with the backend's own Python client.

Each function takes the provider's settings (env var name -> value), writes something,
reads it back, and asserts it came back unchanged.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

RoundTrip = Callable[[Mapping[str, str]], None]


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextmanager
def environ(env: Mapping[str, str]) -> Iterator[None]:
    """Expose settings as real environment variables, as applications will read them."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def redis_roundtrip(env: Mapping[str, str]) -> None:
    """SET then GET."""
    import redis

    with redis.Redis.from_url(env["REDIS_URL"]) as client:
        key = _unique("smoke")
        client.set(key, b"hello")
        assert client.get(key) == b"hello"


def redis_cluster_roundtrip(env: Mapping[str, str]) -> None:
    """SET then GET through the cluster client (it follows the slot to its master)."""
    from redis.cluster import RedisCluster

    with RedisCluster.from_url(env["REDIS_CLUSTER_URL"]) as client:
        key = _unique("smoke")
        client.set(key, b"hello")
        assert client.get(key) == b"hello"


def redis_tls_roundtrip(env: Mapping[str, str]) -> None:
    """SET then GET over TLS, the certificate checked."""
    import redis

    with redis.Redis.from_url(env["REDIS_TLS_URL"]) as client:
        key = _unique("smoke")
        client.set(key, b"hello")
        assert client.get(key) == b"hello"


def postgres_roundtrip(env: Mapping[str, str]) -> None:
    """CREATE TABLE, INSERT, SELECT."""
    import psycopg

    table = _unique("smoke").replace("-", "_")
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, body text)")
        conn.execute(f"INSERT INTO {table} VALUES (1, %s)", ("hello",))
        row = conn.execute(f"SELECT body FROM {table} WHERE id = 1").fetchone()
        assert row == ("hello",)


def rabbitmq_roundtrip(env: Mapping[str, str]) -> None:
    """Declare a queue, publish, get, ack."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(env["AMQP_URL"]))
    try:
        channel = connection.channel()
        queue = _unique("smoke")
        channel.queue_declare(queue=queue, durable=True)
        channel.basic_publish(exchange="", routing_key=queue, body=b"hello")
        for _ in range(50):
            method, _props, body = channel.basic_get(queue=queue)
            if method is not None:
                break
            time.sleep(0.1)
        assert method is not None and body == b"hello"
        channel.basic_ack(method.delivery_tag)
        channel.queue_declare(queue=LEFTOVER_QUEUE, durable=True)
    finally:
        connection.close()


def _boto(service: str) -> object:
    import boto3

    # boto3 itself reads AWS_ENDPOINT_URL_SQS / _DYNAMODB and the credentials from the env.
    return boto3.client(service)


def sqs_roundtrip(env: Mapping[str, str]) -> None:
    """Create a queue, send, receive, delete the message."""
    with environ(env):
        sqs = _boto("sqs")
    queue_url = sqs.create_queue(QueueName=_unique("smoke"))["QueueUrl"]  # type: ignore[attr-defined]
    sqs.send_message(QueueUrl=queue_url, MessageBody="hello")  # type: ignore[attr-defined]
    messages = sqs.receive_message(  # type: ignore[attr-defined]
        QueueUrl=queue_url,
        WaitTimeSeconds=5,
        MaxNumberOfMessages=1,
    )["Messages"]
    assert messages[0]["Body"] == "hello"
    sqs.delete_message(  # type: ignore[attr-defined]
        QueueUrl=queue_url,
        ReceiptHandle=messages[0]["ReceiptHandle"],
    )


def dynamodb_roundtrip(env: Mapping[str, str]) -> None:
    """Create a table, conditional put, get."""
    with environ(env):
        ddb = _boto("dynamodb")
    table = _unique("smoke")
    ddb.create_table(  # type: ignore[attr-defined]
        TableName=table,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
    )
    ddb.get_waiter("table_exists").wait(TableName=table)  # type: ignore[attr-defined]
    ddb.put_item(  # type: ignore[attr-defined]
        TableName=table,
        Item={"pk": {"S": "a"}, "body": {"S": "hello"}},
        ConditionExpression="attribute_not_exists(pk)",
    )
    item = ddb.get_item(TableName=table, Key={"pk": {"S": "a"}}, ConsistentRead=True)  # type: ignore[attr-defined]
    assert item["Item"]["body"]["S"] == "hello"


def moto_roundtrip(env: Mapping[str, str]) -> None:
    """moto serves both SQS and DynamoDB."""
    sqs_roundtrip(env)
    dynamodb_roundtrip(env)


def pubsub_roundtrip(env: Mapping[str, str]) -> None:
    """Create topic and subscription, publish, pull, ack."""
    from google.cloud import pubsub_v1

    project = env["PUBSUB_PROJECT_ID"]
    with environ(env):
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(project, _unique("smoke"))
    subscription = subscriber.subscription_path(project, _unique("smoke"))
    publisher.create_topic(request={"name": topic})
    subscriber.create_subscription(request={"name": subscription, "topic": topic})
    publisher.publish(topic, b"hello").result(timeout=10)
    received = []
    deadline = time.monotonic() + 15
    while not received and time.monotonic() < deadline:
        response = subscriber.pull(
            request={"subscription": subscription, "max_messages": 1}, timeout=5
        )
        received = list(response.received_messages)
    assert received and received[0].message.data == b"hello"
    subscriber.acknowledge(request={"subscription": subscription, "ack_ids": [received[0].ack_id]})
    subscriber.close()


def firestore_roundtrip(env: Mapping[str, str]) -> None:
    """Create a document if absent, increment a field, read it back."""
    from google.cloud import firestore

    with environ(env):
        client = firestore.Client(project=env["GOOGLE_CLOUD_PROJECT"])
    doc = client.collection(_unique("smoke")).document("a")
    doc.create({"body": "hello", "count": 1})
    doc.update({"count": firestore.Increment(1)})
    snapshot = doc.get()
    assert snapshot.to_dict() == {"body": "hello", "count": 2}
    client.close()


def azurite_roundtrip(env: Mapping[str, str]) -> None:
    """Create a queue, send, receive, delete the message."""
    from azure.storage.queue import QueueClient

    queue = QueueClient.from_connection_string(
        env["AZURE_STORAGE_CONNECTION_STRING"], _unique("smoke")
    )
    queue.create_queue()
    queue.send_message("hello")
    messages = list(queue.receive_messages(max_messages=1, visibility_timeout=30))
    assert messages and messages[0].content == "hello"
    assert messages[0].dequeue_count == 1
    queue.delete_message(messages[0])


def cosmos_roundtrip(env: Mapping[str, str]) -> None:
    """Create database and container, upsert, read, query by partition key."""
    import warnings

    from azure.cosmos import CosmosClient, PartitionKey
    from urllib3.exceptions import InsecureRequestWarning

    with warnings.catch_warnings():
        # The local server's certificate is self-signed; real Cosmos has a valid one.
        warnings.simplefilter("ignore", InsecureRequestWarning)
        client = CosmosClient(
            env["COSMOS_ENDPOINT"],
            credential=env["COSMOS_KEY"],
            connection_verify=False,
            enable_endpoint_discovery=False,
        )
        database = client.create_database_if_not_exists(_unique("smoke"))
        container = database.create_container_if_not_exists(
            id="items",
            partition_key=PartitionKey(path="/pk"),
        )
        container.upsert_item({"id": "a", "pk": "p", "body": "hello"})
        assert container.read_item("a", partition_key="p")["body"] == "hello"
        rows = list(
            container.query_items(
                "SELECT * FROM c WHERE c.pk = @pk",
                parameters=[{"name": "@pk", "value": "p"}],
                partition_key="p",
            )
        )
        assert [r["id"] for r in rows] == ["a"]


def _bootstrap(env: Mapping[str, str]) -> str:
    # tansu exports a variable of its own, so that it never hides Kafka's.
    return env.get("KAFKA_BOOTSTRAP_SERVERS") or env["TANSU_BOOTSTRAP_SERVERS"]


def kafka_roundtrip(env: Mapping[str, str]) -> None:
    """Create a topic, produce, consume in a consumer group, commit."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    servers = _bootstrap(env)
    topic = _unique("smoke")
    admin = AdminClient({"bootstrap.servers": servers})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(
        timeout=30
    )
    producer = Producer({"bootstrap.servers": servers})
    producer.produce(topic, key=b"k", value=b"hello")
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": _unique("smoke"),
            # tansu answers ListOffsets "latest" wrongly; "earliest" works on both brokers.
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    try:
        consumer.subscribe([topic])
        message = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                break
        assert message is not None and message.error() is None
        assert message.value() == b"hello"
        consumer.commit(message=message, asynchronous=False)
    finally:
        consumer.close()


def cassandra_roundtrip(env: Mapping[str, str]) -> None:
    """Create keyspace and table, insert, lightweight transaction, select."""
    from cassandra.cluster import Cluster
    from cassandra.policies import DCAwareRoundRobinPolicy

    cluster = Cluster(
        env["CASSANDRA_CONTACT_POINTS"].split(","),
        port=int(env["CASSANDRA_PORT"]),
        load_balancing_policy=DCAwareRoundRobinPolicy(local_dc=env["CASSANDRA_LOCAL_DC"]),
        protocol_version=5,
    )
    with cluster:
        session = cluster.connect()
        keyspace = _unique("smoke").replace("-", "_")
        session.execute(
            f"CREATE KEYSPACE {keyspace} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}",
            timeout=60,
        )
        session.execute(f"CREATE TABLE {keyspace}.t (id int PRIMARY KEY, body text)", timeout=60)
        session.execute(f"INSERT INTO {keyspace}.t (id, body) VALUES (1, 'hello')")
        applied = session.execute(
            f"INSERT INTO {keyspace}.t (id, body) VALUES (1, 'again') IF NOT EXISTS"
        ).one()
        assert applied[0] is False
        row = session.execute(f"SELECT body FROM {keyspace}.t WHERE id = 1").one()
        assert row.body == "hello"


ROUNDTRIPS: dict[str, RoundTrip] = {
    "redis": redis_roundtrip,
    "redis-cluster": redis_cluster_roundtrip,
    "redis-tls": redis_tls_roundtrip,
    "postgres": postgres_roundtrip,
    "rabbitmq": rabbitmq_roundtrip,
    "moto": moto_roundtrip,
    "elasticmq": sqs_roundtrip,
    "dynamodb-local": dynamodb_roundtrip,
    "pubsub": pubsub_roundtrip,
    "firestore": firestore_roundtrip,
    "azurite": azurite_roundtrip,
    "cosmos": cosmos_roundtrip,
    "kafka": kafka_roundtrip,
    "tansu": kafka_roundtrip,
    "cassandra": cassandra_roundtrip,
}


def _sqs_queues(env: Mapping[str, str]) -> list[str]:
    with environ(env):
        sqs = _boto("sqs")
    return list(sqs.list_queues().get("QueueUrls", []))  # type: ignore[attr-defined]


def _dynamodb_tables(env: Mapping[str, str]) -> list[str]:
    with environ(env):
        ddb = _boto("dynamodb")
    return list(ddb.list_tables()["TableNames"])  # type: ignore[attr-defined]


def _redis_keys(env: Mapping[str, str]) -> list[str]:
    import redis

    with redis.Redis.from_url(env["REDIS_URL"]) as client:
        return [k.decode() for k in client.keys("*")]


def _redis_cluster_keys(env: Mapping[str, str]) -> list[str]:
    from redis.cluster import RedisCluster

    with RedisCluster.from_url(env["REDIS_CLUSTER_URL"]) as client:
        return [k.decode() for k in client.keys(target_nodes=RedisCluster.PRIMARIES)]


def _redis_tls_keys(env: Mapping[str, str]) -> list[str]:
    import redis

    with redis.Redis.from_url(env["REDIS_TLS_URL"]) as client:
        return [k.decode() for k in client.keys("*")]


def _postgres_tables(env: Mapping[str, str]) -> list[str]:
    import psycopg

    with psycopg.connect(env["DATABASE_URL"]) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return [r[0] for r in rows]


def _rabbitmq_queues(env: Mapping[str, str]) -> list[str]:
    # AMQP cannot list queues; a passive declare of a queue made before reset must fail.
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(env["AMQP_URL"]))
    try:
        channel = connection.channel()
        try:
            channel.queue_declare(queue=LEFTOVER_QUEUE, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return []
        return [LEFTOVER_QUEUE]
    finally:
        if connection.is_open:
            connection.close()


def _pubsub_topics(env: Mapping[str, str]) -> list[str]:
    from google.cloud import pubsub_v1

    with environ(env):
        publisher = pubsub_v1.PublisherClient()
    project = f"projects/{env['PUBSUB_PROJECT_ID']}"
    return [t.name for t in publisher.list_topics(request={"project": project})]


def _firestore_collections(env: Mapping[str, str]) -> list[str]:
    from google.cloud import firestore

    with environ(env):
        client = firestore.Client(project=env["GOOGLE_CLOUD_PROJECT"])
    # Collections exist only while they hold documents.
    return [c.id for c in client.collections()]


def _azurite_queues(env: Mapping[str, str]) -> list[str]:
    from azure.storage.queue import QueueServiceClient

    service = QueueServiceClient.from_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"])
    return [q.name for q in service.list_queues()]


def _cosmos_databases(env: Mapping[str, str]) -> list[str]:
    import warnings

    from azure.cosmos import CosmosClient
    from urllib3.exceptions import InsecureRequestWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureRequestWarning)
        client = CosmosClient(
            env["COSMOS_ENDPOINT"],
            credential=env["COSMOS_KEY"],
            connection_verify=False,
            enable_endpoint_discovery=False,
        )
        return [d["id"] for d in client.list_databases()]


def _kafka_topics(env: Mapping[str, str]) -> list[str]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": _bootstrap(env)})
    return [t for t in admin.list_topics(timeout=10).topics if not t.startswith("__")]


def _cassandra_keyspaces(env: Mapping[str, str]) -> list[str]:
    from cassandra.cluster import Cluster
    from cassandra.policies import DCAwareRoundRobinPolicy

    cluster = Cluster(
        env["CASSANDRA_CONTACT_POINTS"].split(","),
        port=int(env["CASSANDRA_PORT"]),
        load_balancing_policy=DCAwareRoundRobinPolicy(local_dc=env["CASSANDRA_LOCAL_DC"]),
        protocol_version=5,
    )
    with cluster:
        rows = cluster.connect().execute("SELECT keyspace_name FROM system_schema.keyspaces")
        return [r.keyspace_name for r in rows if not r.keyspace_name.startswith("system")]


def _moto_leftovers(env: Mapping[str, str]) -> list[str]:
    return _sqs_queues(env) + _dynamodb_tables(env)


LEFTOVER_QUEUE = "flowcraft-smoke-leftover"

# What a round-trip leaves behind, listed through the client: empty right after reset().
LEFTOVERS: dict[str, Callable[[Mapping[str, str]], list[str]]] = {
    "redis": _redis_keys,
    "redis-cluster": _redis_cluster_keys,
    "redis-tls": _redis_tls_keys,
    "postgres": _postgres_tables,
    "rabbitmq": _rabbitmq_queues,
    "moto": _moto_leftovers,
    "elasticmq": _sqs_queues,
    "dynamodb-local": _dynamodb_tables,
    "pubsub": _pubsub_topics,
    "firestore": _firestore_collections,
    "azurite": _azurite_queues,
    "cosmos": _cosmos_databases,
    "kafka": _kafka_topics,
    "tansu": _kafka_topics,
    "cassandra": _cassandra_keyspaces,
}

import aio_pika


async def take_messages(amqp_url: str, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message ready in ``queue``, acknowledged (removed)."""
    connection = await aio_pika.connect(amqp_url)
    taken = []
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        while (message := await declared.get(fail=False, no_ack=True)) is not None:
            taken.append(message)
    return taken

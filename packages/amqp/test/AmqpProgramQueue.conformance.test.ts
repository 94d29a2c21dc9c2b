import { describeWithService } from "../../core/test/utils/services.js"
import { programQueueConformance } from "../../core/test/conformance/ProgramQueueConformance.js"
import { rabbitLayer } from "./utils.js"

describeWithService("AMQP_URL", "RabbitMQ", (url) => {
  programQueueConformance("rabbitmq", (namespace) => rabbitLayer(url, { queueName: namespace }))
})

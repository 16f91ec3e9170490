// Replaces TorchServe 0.12's org.pytorch.serve.ensemble.DagExecutor (same name and public API), put
// ahead of the frontend jar on the classpath by torchserve_ops/frontend.py. Two faults of 0.12 fixed:
//
// 1. A node's answer could be lost: 0.12 queued the node's job, then attached the promise the answer
//    completes. A worker that answered in between (a function node, or any node when the frontend is
//    busy) answered no one, and the request waited out the node's timeout-ms. Here the promise is on
//    the job before the job is queued.
// 2. Threads leaked: each request made a pool of up to 4 threads and shut it down only on success, so
//    every failed request (a node refusing because its job queue is full) left its threads behind
//    (54 -> 6939 frontend threads after 60 s at 4x overload). Here every request shares one pool.
//
// Everything else as 0.12 does it: nodes run as soon as their inputs are in, a node with one parent
// gets the parent's output as "body", one with several gets each under the parent's name; a timed-out
// or failed node call is retried retry-attempts times; a refused one (queue full) fails the request
// at once; execute(input, list) with a list only walks the graph in topological order (validation).
package org.pytorch.serve.ensemble;

import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionService;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorCompletionService;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.SynchronousQueue;
import java.util.concurrent.ThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicInteger;
import org.pytorch.serve.archive.model.ModelNotFoundException;
import org.pytorch.serve.archive.model.ModelVersionNotFoundException;
import org.pytorch.serve.http.InternalServerException;
import org.pytorch.serve.http.ServiceUnavailableException;
import org.pytorch.serve.job.RestJob;
import org.pytorch.serve.util.messages.InputParameter;
import org.pytorch.serve.util.messages.RequestInput;
import org.pytorch.serve.util.messages.WorkerCommands;
import org.pytorch.serve.wlm.ModelManager;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

public class DagExecutor {

    private static final Logger logger = LoggerFactory.getLogger(DagExecutor.class);
    private static final AtomicInteger threadCount = new AtomicInteger();
    // One thread per node call in flight (each waits for its node's answer), none queued: a call
    // that cannot be queued by TorchServe must fail at once, not wait here. Idle threads end after 5 s.
    private static final ExecutorService nodeCalls =
            new ThreadPoolExecutor(
                    0,
                    Integer.MAX_VALUE,
                    5,
                    TimeUnit.SECONDS,
                    new SynchronousQueue<>(),
                    task -> {
                        Thread t = new Thread(task, "wf-node-" + threadCount.incrementAndGet());
                        t.setDaemon(true);
                        return t;
                    });

    private final Dag dag;
    private final Map<String, RequestInput> inputs = new java.util.concurrent.ConcurrentHashMap<>();

    public DagExecutor(Dag dag) {
        this.dag = dag;
    }

    public ArrayList<NodeOutput> execute(RequestInput input, ArrayList<String> topoSortedList) {
        boolean dryRun = topoSortedList != null;
        CompletionService<NodeOutput> done = dryRun ? null : new ExecutorCompletionService<>(nodeCalls);
        Map<String, Integer> inDegree = dag.getInDegreeMap(); // a fresh copy on each call
        Set<String> ready = dag.getStartNodeNames(); // likewise
        Set<String> running = new HashSet<>();
        ArrayList<NodeOutput> leaves = new ArrayList<>();

        if (!dryRun) {
            for (String name : ready) {
                RequestInput first = new RequestInput(UUID.randomUUID().toString());
                first.setHeaders(input.getHeaders());
                first.setParameters(input.getParameters());
                inputs.put(name, first);
            }
        }
        while (!ready.isEmpty()) {
            List<NodeOutput> finished = new ArrayList<>();
            for (String name : new ArrayList<>(ready)) {
                if (running.add(name)) {
                    if (dryRun) {
                        finished.add(new NodeOutput(name, null));
                    } else {
                        WorkflowModel model = dag.getNodes().get(name).getWorkflowModel();
                        RequestInput nodeInput = inputs.get(name);
                        done.submit(() -> invokeModel(name, model, nodeInput, 0));
                    }
                }
            }
            if (!dryRun) {
                try {
                    finished.add(done.take().get());
                } catch (InterruptedException | ExecutionException e) {
                    logger.error(e.getMessage());
                    // The client sees what follows the message's last colon (WorkflowManager).
                    String[] parts = String.valueOf(e.getMessage()).split(":");
                    throw new InternalServerException(parts[parts.length - 1]);
                }
            }
            for (NodeOutput out : finished) {
                String name = out.getNodeName();
                running.remove(name);
                ready.remove(name);
                if (dryRun) {
                    topoSortedList.add(name);
                }
                Set<String> children = dag.getDagMap().get(name).get("outDegree");
                if (children.isEmpty()) {
                    leaves.add(out);
                    continue;
                }
                for (String child : children) {
                    if (!dryRun) {
                        passOn(name, (byte[]) out.getData(), child, inDegree.get(child), input);
                    }
                    inDegree.replace(child, inDegree.get(child) - 1);
                    if (inDegree.get(child) == 0) {
                        ready.add(child);
                    }
                }
            }
        }
        return leaves;
    }

    private void passOn(String parent, byte[] data, String child, int parents, RequestInput request) {
        RequestInput childInput = inputs.get(child);
        if (childInput == null) {
            childInput = new RequestInput(UUID.randomUUID().toString());
            List<InputParameter> params = new ArrayList<>();
            params.add(new InputParameter(parents == 1 ? "body" : parent, data));
            childInput.setParameters(params);
            childInput.setHeaders(request.getHeaders());
            inputs.put(child, childInput);
        } else {
            childInput.addParameter(new InputParameter(parent, data));
        }
    }

    private NodeOutput invokeModel(String nodeName, WorkflowModel model, RequestInput input, int attempt)
            throws ModelNotFoundException, ModelVersionNotFoundException {
        logger.debug(String.format("Invoking -  %s for attempt %d", nodeName, attempt));
        CompletableFuture<byte[]> answer = new CompletableFuture<>();
        RestJob job = new RestJob(null, model.getName(), null, WorkerCommands.PREDICT, input);
        job.setResponsePromise(answer); // before the job is queued: a quick answer is not lost
        if (!ModelManager.getInstance().addJob(job)) {
            throw new ServiceUnavailableException(
                    "Model \"" + model.getName() + "\" has no worker to serve inference request. "
                            + "Its job queue is full or it has no workers");
        }
        try {
            return new NodeOutput(nodeName, answer.get(model.getTimeOutMs(), TimeUnit.MILLISECONDS));
        } catch (InterruptedException | ExecutionException | TimeoutException e) {
            if (e instanceof TimeoutException) {
                logger.error(String.format("Timed out while executing %s for attempt %d", nodeName, attempt));
            } else {
                logger.error(e.getMessage());
            }
            if (attempt < model.getRetryAttempts()) {
                return invokeModel(nodeName, model, input, attempt + 1);
            }
            throw new InternalServerException(
                    String.format(
                            "Failed to execute workflow Node after %d attempts. Error executing %s",
                            attempt + 1, nodeName));
        }
    }
}
